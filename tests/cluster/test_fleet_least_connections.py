"""least-connections across the fleet: in-flight requests are counted in Redis, so every
replica sees every other replica's requests, and a dead replica's requests stop counting
once their lease (connect + write + read timeout) has passed.

Two mock upstreams: ``slow`` answers after 1.5 s, ``fast`` at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.cluster.fleet import (
    Replica,
    balanced_route,
    chat_target,
    declarative_config,
    running_fleet,
)

pytestmark = pytest.mark.cluster

REPLICAS = 4
SLOW_MS = 1500
LEASE_MS = 3000  # connect 500 + write 500 + read 2000
BODY = {"model": "any", "messages": [{"role": "user", "content": "take your time"}]}


def _config(slow_port: int, fast_port: int) -> dict[str, Any]:
    def target(model: str, port: int, weight: int = 100) -> dict[str, Any]:
        return chat_target(model, port, weight=weight)

    def route(name: str, targets: list[dict[str, Any]], **balancer: Any) -> dict[str, Any]:
        return balanced_route(name, {"algorithm": "least-connections", **balancer}, targets)

    timeouts = {"connect_timeout": 500, "write_timeout": 500, "read_timeout": 2000}
    routes = [
        route("held", [target("heavy", slow_port, 2), target("light", slow_port, 1)]),
        route("mixed", [target("slow", slow_port), target("fast", fast_port)]),
        route("orphan", [target("orphan-a", slow_port), target("orphan-b", slow_port)], **timeouts),
    ]
    return declarative_config(routes)


@dataclass
class Fleet:
    slow: httpx.Client
    fast: httpx.Client
    shared: list[Replica]
    local: list[int]

    def reset(self) -> None:
        for mock in (self.slow, self.fast):
            mock.post("/mock/reset").raise_for_status()

    def served(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for mock in (self.slow, self.fast):
            for model, row in mock.get("/mock/stats").json()["by_model"].items():
                counts[model] = counts.get(model, 0) + row["requests"]
        return counts

    def in_flight(self, admin_port: int, balancer: str) -> dict[str, int]:
        status = httpx.get(f"http://127.0.0.1:{admin_port}/status", timeout=5).json()
        [plan] = [b for b in status["balancers"] if b["id"] == balancer]
        return {t["model"].removeprefix("openai/"): t["in_flight"] for t in plan["targets"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet-lc")
    with running_fleet(
        logs,
        _config,
        # One more shared replica than the tests use: the orphan test kills it.
        shared=REPLICAS + 1,
        local=REPLICAS,
        mocks=[("--latency-ms", str(SLOW_MS)), ()],  # slow, fast
    ) as started:
        slow, fast = started.mocks
        yield Fleet(slow, fast, started.shared, started.local_ports)


async def _post(client: httpx.AsyncClient, port: int, route: str, delay_s: float = 0.0) -> int:
    await asyncio.sleep(delay_s)
    url = f"http://127.0.0.1:{port}/{route}/v1/chat/completions"
    try:
        return (await client.post(url, json=BODY)).status_code
    except httpx.HTTPError:
        return 0


def test_held_requests_spread_per_weight_over_the_fleet(fleet: Fleet) -> None:
    """12 requests held open at once, started 40 ms apart through 4 replicas: in flight
    (in_flight + 1) / weight stays level, so 2:1 weights hold 8 and 4."""
    fleet.reset()
    ports = [port for _, port, _ in fleet.shared[:REPLICAS]]
    admin = fleet.shared[1][2]

    async def run() -> tuple[list[int], dict[str, int]]:
        async with httpx.AsyncClient(timeout=10) as client:
            requests = [
                asyncio.create_task(_post(client, ports[i % REPLICAS], "held", i * 0.04))
                for i in range(12)
            ]
            await asyncio.sleep(12 * 0.04 + 0.3)
            seen = await asyncio.to_thread(fleet.in_flight, admin, "held")
            return list(await asyncio.gather(*requests)), seen

    statuses, in_flight = asyncio.run(run())
    assert statuses == [200] * 12
    assert in_flight == {"heavy": 8, "light": 4}
    assert fleet.served() == {"heavy": 8, "light": 4}
    assert fleet.in_flight(admin, "held") == {"heavy": 0, "light": 0}


def _mixed(fleet: Fleet, ports: list[int]) -> dict[str, int]:
    """One request (to the idle fleet) through the first replica lands on ``slow`` and
    stays there 1.5 s; meanwhile the three other replicas send nine requests, one after
    another."""
    fleet.reset()

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            first = asyncio.create_task(_post(client, ports[0], "mixed"))
            await asyncio.sleep(0.3)
            rest = [await _post(client, ports[1 + i % 3], "mixed") for i in range(9)]
            return [await first, *rest]

    assert asyncio.run(run()) == [200] * 10
    return fleet.served()


def test_every_replica_sees_the_requests_in_flight_elsewhere(fleet: Fleet) -> None:
    fleet_wide = _mixed(fleet, [port for _, port, _ in fleet.shared[:REPLICAS]])
    per_replica = _mixed(fleet, fleet.local)
    print(
        f"\nleast_connections_requests_on_busy_slow_target: fleet_wide={fleet_wide}, "
        f"local_counters={per_replica}"
    )
    # Fleet-wide, slow holds one request, so the other replicas send everything to fast.
    assert fleet_wide == {"slow": 1, "fast": 9}
    # With counters per replica, each of the three others sees an idle pair at every one
    # of its requests (its own are done), rotates, and sends its 1st and 3rd to slow.
    assert per_replica == {"slow": 7, "fast": 3}


def test_a_dead_replicas_requests_stop_counting_after_their_lease(fleet: Fleet) -> None:
    fleet.reset()
    victim, victim_port, _ = fleet.shared[REPLICAS]
    survivor_port, survivor_admin = fleet.shared[0][1], fleet.shared[0][2]

    async def hold_two() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            held = [
                asyncio.create_task(_post(client, victim_port, "orphan", delay))
                for delay in (0.0, 0.05)
            ]
            await asyncio.sleep(0.4)  # both are waiting on the slow upstream
            taken_at = time.monotonic()
            victim.kill()
            await asyncio.gather(*held)
            leaked = await asyncio.to_thread(fleet.in_flight, survivor_admin, "orphan")
            assert leaked == {"orphan-a": 1, "orphan-b": 1}  # nobody settled them
            await asyncio.sleep(max(0.0, LEASE_MS / 1000 - (time.monotonic() - taken_at)) + 0.3)
            # The next selection sweeps the expired leases: only its own request counts.
            request = asyncio.create_task(_post(client, survivor_port, "orphan"))
            await asyncio.sleep(0.5)
            now = await asyncio.to_thread(fleet.in_flight, survivor_admin, "orphan")
            assert sorted(now.values()) == [0, 1]
            assert await request == 200

    asyncio.run(hold_two())
    assert sum(fleet.in_flight(survivor_admin, "orphan").values()) == 0
