"""priority across the fleet: Kong's weight groups, heaviest first. The lower group serves
only while every target of the top group is unavailable (out of rotation for the whole
fleet, or already tried by the request), and the fleet returns to the top group when it
comes back. Within a group the fleet-wide round-robin shares the requests exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.cluster.fleet import balanced_route, chat_target, declarative_config, running_fleet

pytestmark = pytest.mark.cluster

REPLICAS = 4
CONCURRENCY = 8
FAIL_TIMEOUT_MS = 3000
GROUPS = {"primary-a": 70, "primary-b": 70, "backup": 25}


def _config(mock_port: int) -> dict[str, Any]:
    targets = [chat_target(model, mock_port, weight=weight) for model, weight in GROUPS.items()]
    balancer = {
        "algorithm": "priority",
        "max_fails": 1,
        "fail_timeout": FAIL_TIMEOUT_MS,
        "failover_criteria": ["error", "timeout", "http_500"],
    }
    return declarative_config([balanced_route("tiers", balancer, targets)])


@dataclass
class Fleet:
    mock: httpx.Client
    ports: list[int]

    def reset(self, **control: Any) -> None:
        self.mock.post("/mock/reset").raise_for_status()
        if control:
            self.mock.post("/mock/control", json=control).raise_for_status()

    def upstream(self) -> Counter[str]:
        return Counter(r["body"]["model"] for r in self.mock.get("/mock/requests").json())

    def send(self, count: int) -> Counter[str]:
        """``count`` requests over the replicas, ``CONCURRENCY`` at a time: who answered."""

        async def run() -> Counter[str]:
            served: Counter[str] = Counter()
            queue = list(range(count))
            body = {"model": "any", "messages": [{"role": "user", "content": "who is on duty?"}]}
            async with httpx.AsyncClient(timeout=10) as client:

                async def worker() -> None:
                    while queue:
                        n = queue.pop()
                        port = self.ports[n % REPLICAS]
                        url = f"http://127.0.0.1:{port}/tiers/v1/chat/completions"
                        response = await client.post(url, json=body)
                        assert response.status_code == 200, response.text
                        served[response.json()["model"]] += 1

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return served

        return asyncio.run(run())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet-priority")
    with running_fleet(logs, _config, shared=REPLICAS, mocks=[("--latency-ms", "5")]) as started:
        yield Fleet(started.mocks[0], started.shared_ports)


def test_the_top_group_shares_everything_while_it_is_up(fleet: Fleet) -> None:
    fleet.reset()
    assert fleet.send(40) == {"primary-a": 20, "primary-b": 20}


def test_the_lower_group_serves_only_while_the_whole_top_group_is_out(fleet: Fleet) -> None:
    # One primary down: the other takes everything, the backup still nothing.
    fleet.reset(fail_models={"primary-a": 500})
    assert fleet.send(40) == {"primary-b": 40}
    assert fleet.upstream()["primary-a"] <= CONCURRENCY  # then it was out fleet-wide

    # Both primaries down: the backup serves, and once both are out of rotation no
    # request even tries them.
    fleet.reset(fail_models={"primary-a": 500, "primary-b": 500})
    down_at = time.monotonic()
    assert fleet.send(40) == {"backup": 40}
    tried = fleet.upstream()
    assert tried["primary-a"] + tried["primary-b"] <= 2 * CONCURRENCY
    assert time.monotonic() - down_at < FAIL_TIMEOUT_MS / 1000

    # They recover; after fail_timeout the fleet is back on the top group.
    fleet.reset()
    time.sleep(max(0.0, FAIL_TIMEOUT_MS / 1000 - (time.monotonic() - down_at)) + 0.2)
    served = fleet.send(40)
    assert served["backup"] == 0
    assert served["primary-a"] + served["primary-b"] == 40
