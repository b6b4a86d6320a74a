"""The circuit breaker holds for the whole fleet: real replicas sharing one Redis.

A target that failed ``max_fails`` times through one replica is out of rotation on every
replica; a 429's ``Retry-After`` seen by one replica keeps every replica away until then.
The same traffic on replicas with only local state (Kong's model: a breaker per nginx
worker) is measured beside it: each replica has to fail ``max_fails`` times on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.fleet import balanced_route, chat_target, declarative_config, running_fleet

pytestmark = pytest.mark.cluster

REPLICAS = 3
MAX_FAILS = 3
FAIL_TIMEOUT_MS = 2500
RETRY_AFTER_S = 3
BODY = {"model": "any", "messages": [{"role": "user", "content": "is anyone there?"}]}


def _config(mock_port: int) -> dict[str, Any]:
    def route(name: str, balancer: dict[str, Any]) -> dict[str, Any]:
        targets = [chat_target(model, mock_port) for model in ("flaky", "steady")]
        return balanced_route(name, {"algorithm": "round-robin", **balancer}, targets)

    breaker = {
        "max_fails": MAX_FAILS,
        "fail_timeout": FAIL_TIMEOUT_MS,
        "failover_criteria": ["error", "timeout", "http_500"],
    }
    # A fail_timeout no slow machine outlasts while the measurement runs.
    patient = {**breaker, "fail_timeout": 60_000}
    limited = {"failover_criteria": ["error", "timeout", "http_429"]}
    return declarative_config(
        [route("breaker", breaker), route("patient", patient), route("limited", limited)]
    )


@dataclass
class Fleet:
    mock: httpx.Client
    shared: list[int]
    local: list[int]
    results: Path

    def reset(self, **control: Any) -> None:
        self.mock.post("/mock/reset").raise_for_status()
        if control:
            self.mock.post("/mock/control", json=control).raise_for_status()

    def upstream_models(self) -> list[str]:
        return [r["body"]["model"] for r in self.mock.get("/mock/requests").json()]

    def report(self, name: str, values: dict[str, float]) -> None:
        results = json.loads(self.results.read_text()) if self.results.exists() else {}
        results[name] = values
        self.results.write_text(json.dumps(results, indent=2))
        print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet-breaker")
    with running_fleet(logs, _config, shared=REPLICAS, local=REPLICAS) as started:
        yield Fleet(
            mock=started.mocks[0],
            shared=started.shared_ports,
            local=started.local_ports,
            results=logs / "fleet-breaker-results.json",
        )


def _send(ports: list[int], route: str, count: int) -> list[int]:
    """``count`` requests, one at a time, spread over ``ports``: their statuses."""
    statuses = []
    with httpx.Client(timeout=10) as client:
        for i in range(count):
            url = f"http://127.0.0.1:{ports[i % len(ports)]}/{route}/v1/chat/completions"
            statuses.append(client.post(url, json=BODY).status_code)
    return statuses


def test_breaker_opened_by_one_replica_holds_on_every_replica(fleet: Fleet) -> None:
    fleet.reset(fail_models={"flaky": 500})
    first, others = fleet.shared[:1], fleet.shared[1:]
    # Round-robin alternates, so 2 * MAX_FAILS requests through one replica try flaky
    # MAX_FAILS times; every one of them still succeeds on steady.
    assert _send(first, "breaker", 2 * MAX_FAILS) == [200] * (2 * MAX_FAILS)
    opened_at = time.monotonic()
    assert fleet.upstream_models().count("flaky") == MAX_FAILS

    # The other replicas never send flaky a request while it is out of rotation.
    assert _send(others, "breaker", 12) == [200] * 12
    assert time.monotonic() - opened_at < FAIL_TIMEOUT_MS / 1000
    assert fleet.upstream_models().count("flaky") == MAX_FAILS

    # After fail_timeout every replica takes it back into rotation.
    time.sleep(max(0.0, FAIL_TIMEOUT_MS / 1000 - (time.monotonic() - opened_at)) + 0.2)
    fleet.reset()
    assert _send(others, "breaker", 4) == [200] * 4
    assert fleet.upstream_models().count("flaky") == 2


def test_failures_the_fleet_sends_to_a_dead_target(fleet: Fleet) -> None:
    """30 requests over 3 replicas while one target is down: how many reach it."""
    reached = {}
    for name, ports in (("fleet_wide", fleet.shared), ("local_counters", fleet.local)):
        fleet.reset(fail_models={"flaky": 500})
        assert _send(ports, "patient", 30) == [200] * 30
        reached[name] = fleet.upstream_models().count("flaky")
    fleet.report("breaker_requests_to_dead_target", reached)
    assert reached["fleet_wide"] == MAX_FAILS
    # Per-replica breakers: every replica pays max_fails failures of its own.
    assert reached["local_counters"] == REPLICAS * MAX_FAILS


def test_retry_after_seen_by_one_replica_holds_on_every_replica(fleet: Fleet) -> None:
    fleet.reset(fail_models={"flaky": 429}, retry_after=RETRY_AFTER_S)
    # The first request meets flaky's 429 and fails over (http_429 is a criterion).
    assert _send(fleet.shared[:1], "limited", 1) == [200]
    limited_at = time.monotonic()
    assert fleet.upstream_models() == ["flaky", "steady"]

    # max_fails is 0 on this route: only Retry-After keeps every replica away from it.
    assert _send(fleet.shared, "limited", 12) == [200] * 12
    assert time.monotonic() - limited_at < RETRY_AFTER_S
    assert fleet.upstream_models().count("flaky") == 1

    time.sleep(max(0.0, RETRY_AFTER_S - (time.monotonic() - limited_at)) + 0.2)
    fleet.reset()
    assert _send(fleet.shared[1:], "limited", 4) == [200] * 4
    assert fleet.upstream_models().count("flaky") == 2
