"""Aggregators can die at any moment: nothing lost, nothing counted twice.

Two proxy replicas take steady traffic from the OpenAI SDK while aggregators are
SIGKILLed and replaced (or run two at once). When the traffic stops and the new
aggregators catch up, `tokenlb stats` must report exactly what the mock upstream served,
per model: requests and tokens.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.cluster.fleet import Scenario, heavy_tailed_prompts, run_load, write_config
from tests.support import (
    ManagedProcess,
    start_mock,
    start_proxies,
    start_redis,
    tokenlb_command,
)
from tokenlb_proxy.keys import AGGREGATOR_GROUP, balancer_keys

pytestmark = pytest.mark.cluster

SCENARIO = Scenario("crash", "total-tokens", ("crash-a", "crash-b"))
REQUESTS = 1200
AGGREGATOR_ENV = {
    # Take over a dead aggregator's pending events after 1 s instead of 15.
    "TOKENLB_AGGREGATOR_CLAIM_IDLE_MS": "1000",
    "TOKENLB_AGGREGATOR_DISCOVER_INTERVAL_MS": "200",
    "TOKENLB_AGGREGATOR_BATCH_SIZE": "50",
}


@dataclass
class Cluster:
    redis_url: str
    mock_url: str
    proxies: list[int]
    admin: list[int]
    logs: Path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    processes: list[ManagedProcess] = []
    try:
        redis_proc, redis_port = start_redis(tmp_path)
        processes.append(redis_proc)
        mock, mock_port = start_mock(tmp_path, "--latency-ms", "5")
        processes.append(mock)
        config = write_config(tmp_path / "kong.yaml", [SCENARIO], mock_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        replicas = start_proxies(tmp_path, config, 2, redis_url=redis_url)
        processes += [p for p, _, _ in replicas]
        yield Cluster(
            redis_url=redis_url,
            mock_url=f"http://127.0.0.1:{mock_port}",
            proxies=[port for _, port, _ in replicas],
            admin=[admin for _, _, admin in replicas],
            logs=tmp_path,
        )
    finally:
        for proc in reversed(processes):
            proc.stop()


def _aggregator(cluster: Cluster, name: str) -> ManagedProcess:
    return ManagedProcess(
        name,
        tokenlb_command(
            "aggregator", "--redis-url", cluster.redis_url, "--name", name, "--log-sink", "none"
        ),
        cluster.logs,
        env=AGGREGATOR_ENV,
    )


def _health(cluster: Cluster) -> dict[str, object]:
    status = httpx.get(f"http://127.0.0.1:{cluster.admin[0]}/status", timeout=5).json()
    health: dict[str, object] = status["aggregators"]
    return health


def _applied_by(cluster: Cluster, name: str) -> int:
    alive = _health(cluster)["alive"]
    assert isinstance(alive, list)
    return next((int(a["applied"]) for a in alive if a["name"] == name), 0)


def _start_load(cluster: Cluster) -> tuple[threading.Thread, list[list[str]]]:
    failures: list[list[str]] = []
    prompts = heavy_tailed_prompts(REQUESTS, seed=11)

    def load() -> None:
        failures.append(asyncio.run(run_load(cluster.proxies, SCENARIO.name, prompts, 16)))

    thread = threading.Thread(target=load)
    thread.start()
    return thread, failures


def _wait_caught_up(cluster: Cluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = _health(cluster)
        if health["alive"] and health["lag"] == 0 and health["pending"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"aggregators did not catch up: {health}")


def _assert_stats_match_upstream(cluster: Cluster) -> None:
    reply = subprocess.run(
        tokenlb_command("stats", "--redis-url", cluster.redis_url, "--minutes", "30", "--json"),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (balancer,) = json.loads(reply.stdout)["balancers"]
    counted = {row["model"].split("/", 1)[1]: row["window"] for row in balancer["targets"]}
    served = httpx.get(f"{cluster.mock_url}/mock/stats", timeout=5).json()["by_model"]
    assert sum(served[m]["requests"] for m in SCENARIO.models) == REQUESTS
    for model in SCENARIO.models:
        assert counted[model]["requests"] - counted[model]["errors"] == served[model]["requests"]
        assert counted[model]["prompt_tokens"] == served[model]["prompt_tokens"]
        assert counted[model]["completion_tokens"] == served[model]["completion_tokens"]


def _read_and_die(cluster: Cluster, consumer: str, count: int) -> int:
    """Read events as ``consumer`` and never acknowledge them: a crashed aggregator's PEL."""
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        stream = balancer_keys(f"route:{SCENARIO.name}").events
        reply = client.xreadgroup(AGGREGATOR_GROUP, consumer, {stream: ">"}, count=count)
        return sum(len(entries) for _, entries in reply or [])
    finally:
        client.close()


def _wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_sigkilled_aggregators_lose_and_double_count_nothing(cluster: Cluster) -> None:
    load, failures = _start_load(cluster)
    survivors: list[ManagedProcess] = []
    try:
        # Aggregators in turn, each SIGKILLed while traffic flows and it is busy.
        for round_ in range(4):
            victim = _aggregator(cluster, f"victim-{round_}")
            _wait_until(lambda v=victim.name: _applied_by(cluster, v) > 0)
            victim.kill()
        # A kill between reading and acknowledging is a matter of timing; make sure that
        # case happens at least once: a consumer reads events and dies holding them.
        held = _read_and_die(cluster, "ghost", 25)
        assert held > 0
        survivor = _aggregator(cluster, "survivor")
        survivors.append(survivor)
        load.join(timeout=120)
        assert not load.is_alive()
        assert failures == [[]]
        _wait_caught_up(cluster)
        _assert_stats_match_upstream(cluster)
        assert "took over" in survivor.output()
    finally:
        load.join(timeout=120)
        for proc in survivors:
            proc.stop()


def test_two_aggregators_share_the_stream_without_double_counting(cluster: Cluster) -> None:
    pair = [_aggregator(cluster, "left"), _aggregator(cluster, "right")]
    try:
        load, failures = _start_load(cluster)
        load.join(timeout=120)
        assert failures == [[]]
        _wait_caught_up(cluster)
        _assert_stats_match_upstream(cluster)
        # Both did part of the work.
        assert _applied_by(cluster, "left") > 0
        assert _applied_by(cluster, "right") > 0
    finally:
        for proc in pair:
            proc.stop()
