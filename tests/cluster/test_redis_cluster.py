"""The fleet on a real Redis Cluster: 3 masters, 2 replicas, 5 balancers, one aggregator.

The replicas get a ``redis+cluster://`` URL naming two of the three masters (the client
discovers the third). Every balancer's keys share a hash tag, so each script runs on one
shard, and different balancers land on different masters. The fleet balance holds as on
one server, the aggregator rolls the events up, and ``tokenlb stats`` and ``/status``
read them back, all through the cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cluster.fleet import (
    Scenario,
    counted_per_model,
    heavy_tailed_prompts,
    imbalance,
    run_load,
    write_config,
)
from tests.cluster.steady_load import SteadyLoad
from tests.redis_topologies import RedisClusterNodes, start_redis_cluster
from tests.support import ManagedProcess, start_mock, start_proxies, tokenlb_command
from tokenlb_proxy.keys import BALANCERS_KEY, BalancerKeys, balancer_keys

pytestmark = pytest.mark.cluster

REQUESTS = 500
CONCURRENCY = 24
REPLICAS = 2
MAX_IMBALANCE = 0.03
SCENARIOS = (
    Scenario("prompt", "prompt-tokens", ("prompt-a", "prompt-b")),
    Scenario("completion", "completion-tokens", ("completion-a", "completion-b")),
    Scenario("total", "total-tokens", ("total-a", "total-b")),
    Scenario("cost", "cost", ("cost-a", "cost-b"), prices=((10.0, 30.0), (5.0, 15.0))),
    Scenario("weighted", "total-tokens", ("weighted-a", "weighted-b"), weights=(300, 100)),
)


@dataclass
class ClusterFleet:
    nodes: RedisClusterNodes
    url: str
    mock_url: str
    ports: list[int]
    admin_ports: list[int]
    aggregator: ManagedProcess
    replicas: list[ManagedProcess]
    #: scenario name -> imbalance of the counted quantity after its load
    imbalance: dict[str, float]
    logs: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFleet]:
    logs = tmp_path_factory.mktemp("redis-cluster")
    processes: list[ManagedProcess] = []
    nodes = start_redis_cluster(logs)
    try:
        url = nodes.url(nodes=2)
        mock, mock_port = start_mock(logs, "--latency-ms", "10")
        processes.append(mock)
        config = write_config(logs / "kong.yaml", SCENARIOS, mock_port)
        replicas = start_proxies(logs, config, REPLICAS, redis_url=url)
        processes += [p for p, _, _ in replicas]
        aggregator = ManagedProcess(
            "aggregator",
            tokenlb_command("aggregator", "--redis-url", url, "--log-sink", "none"),
            logs,
            env={"OTEL_TRACES_EXPORTER": "none"},
        )
        processes.append(aggregator)
        ports = [port for _, port, _ in replicas]
        mock_url = f"http://127.0.0.1:{mock_port}"
        results: dict[str, float] = {}
        for index, scenario in enumerate(SCENARIOS):
            prompts = heavy_tailed_prompts(REQUESTS, seed=index)
            failures = asyncio.run(run_load(ports, scenario.name, prompts, CONCURRENCY))
            assert failures == []
            stats = httpx.get(f"{mock_url}/mock/stats", timeout=5).json()["by_model"]
            assert sum(stats[m]["requests"] for m in scenario.models) == REQUESTS
            results[scenario.name] = imbalance(counted_per_model(stats, scenario), scenario)
        print("\nredis cluster imbalance:", json.dumps(results))
        yield ClusterFleet(
            nodes=nodes,
            url=url,
            mock_url=mock_url,
            ports=ports,
            admin_ports=[admin for _, _, admin in replicas],
            aggregator=aggregator,
            replicas=[p for p, _, _ in replicas],
            imbalance=results,
            logs=logs,
        )
    finally:
        for proc in reversed(processes):
            proc.stop()
        nodes.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fleet_balance_on_a_redis_cluster(fleet: ClusterFleet, scenario: Scenario) -> None:
    assert fleet.imbalance[scenario.name] <= MAX_IMBALANCE, fleet.imbalance


def test_balancers_spread_over_masters_each_on_one_slot(fleet: ClusterFleet) -> None:
    masters: dict[str, int] = {}
    for scenario in SCENARIOS:
        keys = balancer_keys(f"route:{scenario.name}")
        # Every key of the balancer hashes to one slot (the one the scripts run on)...
        slots = {fleet.nodes.keyslot(k) for k in (keys.usage, keys.meta, keys.totals)}
        slots |= {fleet.nodes.keyslot(k) for k in (keys.events, keys.targets, keys.rollup(1))}
        assert len(slots) == 1, (scenario.name, slots)
        port = fleet.nodes.master_of_slot(slots.pop())
        masters[scenario.name] = port
        # ...and the state really lives on that master.
        node = redis.Redis(port=port, decode_responses=True)
        try:
            assert node.exists(keys.usage, keys.totals, keys.events) == 3
        finally:
            node.close()
    print("\nbalancer -> master port:", masters)
    assert len(set(masters.values())) >= 2, masters


def _by_model(stats: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    rows = {}
    for balancer in stats["balancers"]:
        for target in balancer["targets"]:
            window = target["window"]
            model = str(target["model"]).removeprefix("openai/")
            rows[model] = (
                window["requests"],
                window["prompt_tokens"],
                window["completion_tokens"],
            )
    return rows


def test_aggregator_stats_and_status_read_the_cluster(fleet: ClusterFleet) -> None:
    served = httpx.get(f"{fleet.mock_url}/mock/stats", timeout=5).json()["by_model"]
    expected = {
        model: (row["requests"], row["prompt_tokens"], row["completion_tokens"])
        for model, row in served.items()
    }
    # `tokenlb stats` reads the aggregator's rollups: every request, counted once.
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            tokenlb_command("stats", "--redis-url", fleet.url, "--json"),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        reported = _by_model(json.loads(done.stdout))
        if reported == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reported == expected, fleet.aggregator.output()[-3000:]

    client = redis.RedisCluster(host="127.0.0.1", port=fleet.nodes.ports[0], decode_responses=True)
    try:
        ids = client.smembers(BALANCERS_KEY)
    finally:
        client.close()
    assert ids == {f"route:{s.name}" for s in SCENARIOS}

    for admin in fleet.admin_ports:
        status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=10).json()
        assert status["degraded"] is False
        assert status["redis"]["reachable"] is True
        assert status["redis"]["url"] == fleet.url
        assert len(status["aggregators"]["alive"]) == 1
        assert status["aggregators"]["lag"] == 0
        # The counters every replica shows are the fleet's, read from the cluster.
        counted = {
            t["model"].removeprefix("openai/"): t["requests"]
            for balancer in status["balancers"]
            for t in balancer["targets"]
        }
        assert counted == {model: row[0] for model, row in expected.items()}

    for process in (fleet.aggregator, *fleet.replicas):
        assert "Traceback" not in process.output(), process.output()[-3000:]
        assert "unreachable" not in process.output()


def test_a_dead_master_degrades_the_fleet_once_and_it_rejoins(tmp_path: Path) -> None:
    """SIGKILL the master holding a balancer under load, restart it 6 s later (empty, same
    slots): no request fails, each replica warns once (no flapping while other masters
    still answer pings), and decisions go through the cluster again afterwards."""
    scenario = SCENARIOS[2]
    nodes = start_redis_cluster(tmp_path)
    processes: list[ManagedProcess] = []
    try:
        mock, mock_port = start_mock(tmp_path, "--latency-ms", "20")
        processes.append(mock)
        config = write_config(tmp_path / "kong.yaml", SCENARIOS, mock_port)
        replicas = start_proxies(tmp_path, config, REPLICAS, redis_url=nodes.url())
        processes += [p for p, _, _ in replicas]
        keys = balancer_keys(f"route:{scenario.name}")
        victim = nodes.ports.index(nodes.master_of_slot(nodes.keyslot(keys.usage)))
        load = SteadyLoad(
            [port for _, port, _ in replicas],
            scenario.name,
            heavy_tailed_prompts(200, seed=5),
            rate=40,
            concurrency=8,
        ).start()
        try:
            time.sleep(3)
            nodes.processes[victim].kill()
            time.sleep(6)
            assert all(_status(admin)["degraded"] for _, _, admin in replicas)
            nodes.restart(victim)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(
                _status(admin)["degraded"] for _, _, admin in replicas
            ):
                time.sleep(0.25)
            assert not any(_status(admin)["degraded"] for _, _, admin in replicas)
            before = _requests_in(nodes, keys)
            time.sleep(3)
            assert _requests_in(nodes, keys) > before  # decided and settled in the cluster
        finally:
            outcomes = load.stop()
        failures = [o for o in outcomes if o.error is not None]
        assert not failures, f"{len(failures)} of {len(outcomes)} failed: {failures[0]}"
        for process, _, _ in replicas:
            log = process.output()
            assert log.count("Redis is unreachable") == 1, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
    finally:
        for proc in reversed(processes):
            proc.stop()
        nodes.stop()


def _status(admin_port: int) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"http://127.0.0.1:{admin_port}/status", timeout=10).json()
    return status


def _requests_in(nodes: RedisClusterNodes, keys: BalancerKeys) -> int:
    client = redis.RedisCluster(host="127.0.0.1", port=nodes.ports[0], decode_responses=True)
    try:
        totals = client.hgetall(keys.totals)
    finally:
        client.close()
    return sum(int(v) for k, v in totals.items() if k.endswith(":requests"))
