"""lowest-latency across the fleet: one shared decayed average per target.

Two mock upstreams: ``quick`` (5 ms + 0.1 ms per token) and ``sluggish`` (60 ms + 1 ms per
token). The fleet learns from every replica's answers, so it sends the slow target only
what exploration needs: one request per half-life for the whole fleet, where replicas with
local averages each explore it themselves. When the quick upstream slows down past the
other, the fleet moves over within a few half-lives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.cluster.fleet import balanced_route, chat_target, declarative_config, running_fleet

pytestmark = pytest.mark.cluster

REPLICAS = 4
HALF_LIFE_S = 1.0
CONCURRENCY = 4
#: The mock upstreams' arguments (see above).
QUICK_UPSTREAM = ("--latency-ms", "5", "--token-delay-ms", "0.1")
SLUGGISH_UPSTREAM = ("--latency-ms", "60", "--token-delay-ms", "1")
BODY = {"model": "any", "messages": [{"role": "user", "content": "quick, please"}]}


def _config(quick_port: int, sluggish_port: int) -> dict[str, Any]:
    def route(name: str, strategy: str) -> dict[str, Any]:
        balancer = {
            "algorithm": "lowest-latency",
            "latency_strategy": strategy,
            "usage_half_life": HALF_LIFE_S,
        }
        targets = [chat_target("sluggish", sluggish_port), chat_target("quick", quick_port)]
        return balanced_route(name, balancer, targets)

    return declarative_config([route("e2e", "e2e"), route("tpot", "tpot")])


@dataclass
class Fleet:
    quick: httpx.Client
    sluggish: httpx.Client
    shared: list[int]
    local: list[int]

    def reset(self) -> None:
        self.quick.post("/mock/reset").raise_for_status()
        self.sluggish.post("/mock/reset").raise_for_status()

    def requests(self) -> dict[str, int]:
        return {
            name: sum(
                row["requests"] for row in mock.get("/mock/stats").json()["by_model"].values()
            )
            for name, mock in (("quick", self.quick), ("sluggish", self.sluggish))
        }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet-latency")
    with running_fleet(
        logs, _config, shared=REPLICAS, local=REPLICAS, mocks=[QUICK_UPSTREAM, SLUGGISH_UPSTREAM]
    ) as started:
        quick, sluggish = started.mocks
        yield Fleet(quick, sluggish, started.shared_ports, started.local_ports)


def _load(ports: list[int], route: str, seconds: float) -> int:
    """``CONCURRENCY`` clients sending one request after another for ``seconds``, spread
    over ``ports``; returns how many were sent (all must succeed)."""

    async def run() -> int:
        deadline = time.monotonic() + seconds
        sent = 0
        async with httpx.AsyncClient(timeout=10) as client:

            async def worker(offset: int) -> None:
                nonlocal sent
                n = offset
                while time.monotonic() < deadline:
                    port = ports[n % len(ports)]
                    url = f"http://127.0.0.1:{port}/{route}/v1/chat/completions"
                    response = await client.post(url, json=BODY)
                    assert response.status_code == 200, response.text
                    sent += 1
                    n += 1

            await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        return sent

    return asyncio.run(run())


@pytest.mark.parametrize("strategy", ["e2e", "tpot"])
def test_the_fleet_explores_the_slow_target_once_per_half_life(fleet: Fleet, strategy: str) -> None:
    seconds = 3 * HALF_LIFE_S
    shares = {}
    for name, ports in (("fleet_wide", fleet.shared), ("local_averages", fleet.local)):
        fleet.reset()
        sent = _load(ports, strategy, seconds)
        served = fleet.requests()
        assert served["quick"] + served["sluggish"] == sent
        shares[name] = served["sluggish"]
    print(f"\nlowest_latency_{strategy}_requests_to_slow_target_in_{seconds:.0f}s: {shares}")
    # Fleet-wide: the first exploration plus one per half-life (the run spans three),
    # give or take one for timing; requests already sent when a sample arrives add at
    # most one per concurrent client.
    assert 1 <= shares["fleet_wide"] <= 1 + 3 + 1 + CONCURRENCY
    # Per replica: every replica explores on its own.
    assert shares["local_averages"] >= REPLICAS * 2


def test_the_fleet_moves_when_the_fast_target_slows_down(fleet: Fleet) -> None:
    fleet.reset()
    _load(fleet.shared, "e2e", HALF_LIFE_S)
    assert fleet.requests()["quick"] > 10 * fleet.requests()["sluggish"]

    fleet.quick.post("/mock/control", json={"latency_ms": 400}).raise_for_status()
    _load(fleet.shared, "e2e", 3 * HALF_LIFE_S)  # sluggish is re-explored, then preferred
    fleet.reset()
    fleet.quick.post("/mock/control", json={"latency_ms": 400}).raise_for_status()
    _load(fleet.shared, "e2e", HALF_LIFE_S)
    after = fleet.requests()
    print(f"\nlowest_latency_after_the_switch: {after}")
    assert after["sluggish"] > 5 * after["quick"]
