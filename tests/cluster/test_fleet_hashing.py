"""consistent-hashing across the fleet: a header value is sticky on every replica, keys
spread by weight, and when a target leaves rotation (the fleet-wide breaker) its keys move
to the same next target on every replica while every other key stays where it was.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.cluster.fleet import balanced_route, chat_target, declarative_config, running_fleet

pytestmark = pytest.mark.cluster

REPLICAS = 4
KEYS = [f"user-{n:04d}" for n in range(200)]
MODELS = ("big", "small-a", "small-b")
WEIGHTS = (300, 100, 100)
CONCURRENCY = 16


def _config(mock_port: int) -> dict[str, Any]:
    targets = [
        chat_target(model, mock_port, weight=weight)
        for model, weight in zip(MODELS, WEIGHTS, strict=True)
    ]
    balancer = {
        "algorithm": "consistent-hashing",
        "hash_on_header": "X-Session",
        "slots": 4096,
        "max_fails": 1,
        "fail_timeout": 60_000,
        "failover_criteria": ["error", "timeout", "http_500"],
    }
    return declarative_config([balanced_route("sticky", balancer, targets)])


@dataclass
class Fleet:
    mock: httpx.Client
    ports: list[int]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet-hashing")
    with running_fleet(logs, _config, shared=REPLICAS, mocks=[("--latency-ms", "5")]) as started:
        yield Fleet(started.mocks[0], started.shared_ports)


def _route_keys(fleet: Fleet, rounds: int) -> dict[str, set[str]]:
    """Every key ``rounds`` times, each time through another replica: the models that
    answered each key."""
    jobs = [
        (key, fleet.ports[(k + r) % REPLICAS]) for r in range(rounds) for k, key in enumerate(KEYS)
    ]
    body = {"model": "any", "messages": [{"role": "user", "content": "remember me"}]}

    async def run() -> dict[str, set[str]]:
        served: dict[str, set[str]] = {key: set() for key in KEYS}
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        async with httpx.AsyncClient(timeout=10) as client:

            async def worker() -> None:
                while not queue.empty():
                    key, port = queue.get_nowait()
                    response = await client.post(
                        f"http://127.0.0.1:{port}/sticky/v1/chat/completions",
                        json=body,
                        headers={"X-Session": key},
                    )
                    assert response.status_code == 200, response.text
                    served[key].add(response.json()["model"])

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return served

    return asyncio.run(run())


def test_a_key_sticks_to_one_target_on_every_replica(fleet: Fleet) -> None:
    fleet.mock.post("/mock/reset").raise_for_status()
    served = _route_keys(fleet, rounds=3)
    assert all(len(models) == 1 for models in served.values())
    shares = Counter(models.pop() for models in served.values())
    print(f"\nconsistent_hashing_key_shares: {dict(shares)} of {len(KEYS)} (weights 3:1:1)")
    assert shares["big"] / len(KEYS) == pytest.approx(0.6, abs=0.1)
    assert min(shares["small-a"], shares["small-b"]) > 0


def test_keys_of_a_target_out_of_rotation_move_the_same_way_everywhere(fleet: Fleet) -> None:
    fleet.mock.post("/mock/reset").raise_for_status()
    before = {key: models.pop() for key, models in _route_keys(fleet, rounds=1).items()}

    fleet.mock.post("/mock/reset").raise_for_status()
    fleet.mock.post("/mock/control", json={"fail_models": {"big": 500}}).raise_for_status()
    after = _route_keys(fleet, rounds=3)

    # max_fails is 1: the first failure anywhere took big out for the whole fleet; only
    # requests already on their way to it then (at most one per client worker) reached it.
    requests = fleet.mock.get("/mock/requests").json()
    reached = sum(1 for r in requests if r["body"]["model"] == "big")
    print(f"\nconsistent_hashing_requests_to_failed_target: {reached} of {3 * len(KEYS)}")
    assert 1 <= reached <= CONCURRENCY
    # Every key kept one target across all replicas...
    assert all(len(models) == 1 for models in after.values())
    # ...and exactly big's keys moved.
    moved = {key for key in KEYS if after[key] != {before[key]}}
    assert moved == {key for key in KEYS if before[key] == "big"}
