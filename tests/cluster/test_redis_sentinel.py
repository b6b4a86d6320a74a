"""Redis Sentinel: the fleet finds the master through a Sentinel and follows a failover.

Two replicas get a ``redis+sentinel://`` URL naming one Sentinel and the monitored
service. Under steady load from the OpenAI SDK the master is SIGKILLed; the Sentinel
promotes its replica within a few seconds. No client request fails (the replicas balance
on local counters meanwhile), and afterwards they decide through the new master.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.cluster.fleet import Scenario, heavy_tailed_prompts, write_config
from tests.cluster.steady_load import SteadyLoad
from tests.redis_topologies import SentinelSetup, start_sentinel
from tests.support import ManagedProcess, start_mock, start_proxies
from tokenlb_proxy.keys import balancer_keys

pytestmark = pytest.mark.cluster

SCENARIO = Scenario("sentinel", "total-tokens", ("sentinel-a", "sentinel-b"))
FAILOVER_TIMEOUT_S = 30.0


@dataclass
class SentinelFleet:
    setup: SentinelSetup
    ports: list[int]
    admin_ports: list[int]
    replicas: list[ManagedProcess]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SentinelFleet]:
    setup = start_sentinel(tmp_path)
    processes: list[ManagedProcess] = []
    try:
        mock, mock_port = start_mock(tmp_path, "--latency-ms", "20")
        processes.append(mock)
        config = write_config(tmp_path / "kong.yaml", [SCENARIO], mock_port)
        replicas = start_proxies(tmp_path, config, 2, redis_url=setup.url())
        processes += [p for p, _, _ in replicas]
        yield SentinelFleet(
            setup=setup,
            ports=[port for _, port, _ in replicas],
            admin_ports=[admin for _, _, admin in replicas],
            replicas=[p for p, _, _ in replicas],
        )
    finally:
        for proc in reversed(processes):
            proc.stop()
        setup.stop()


def _requests_on(port: int) -> int:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        totals = client.hgetall(balancer_keys(f"route:{SCENARIO.name}").totals)
    finally:
        client.close()
    return sum(int(v) for k, v in totals.items() if k.endswith(":requests"))


def _degraded(admin_ports: list[int]) -> list[bool]:
    return [
        httpx.get(f"http://127.0.0.1:{a}/status", timeout=10).json()["degraded"]
        for a in admin_ports
    ]


def _logs(fleet: SentinelFleet) -> str:
    """What the replicas logged, for a failure message."""
    return "\n".join(f"replica {i}:\n{p.output()[-2000:]}" for i, p in enumerate(fleet.replicas))


def test_replicas_follow_a_sentinel_failover(fleet: SentinelFleet) -> None:
    setup = fleet.setup
    load = SteadyLoad(
        fleet.ports, SCENARIO.name, heavy_tailed_prompts(200, seed=3), rate=40, concurrency=8
    ).start()
    try:
        time.sleep(3)
        assert _requests_on(setup.master_port) > 0  # decisions go through the master
        assert _degraded(fleet.admin_ports) == [False, False], _logs(fleet)

        setup.master.kill()
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        while time.monotonic() < deadline and setup.current_master_port() != setup.replica_port:
            time.sleep(0.2)
        assert setup.current_master_port() == setup.replica_port, setup.sentinel.output()
        degraded = _degraded(fleet.admin_ports)
        while time.monotonic() < deadline and any(degraded):
            time.sleep(0.2)
            degraded = _degraded(fleet.admin_ports)
        assert degraded == [False, False], _logs(fleet)
        promoted_with = _requests_on(setup.replica_port)
        time.sleep(3)
        # New decisions are settled on the promoted master.
        assert _requests_on(setup.replica_port) > promoted_with
    finally:
        outcomes = load.stop()

    failures = [o for o in outcomes if o.error is not None]
    assert not failures, f"{len(failures)} of {len(outcomes)} failed, first: {failures[0]}"
    for replica in fleet.replicas:
        log = replica.output()
        assert "Traceback" not in log, log[-3000:]
        assert log.count("Redis is unreachable") == 1, log[-3000:]
