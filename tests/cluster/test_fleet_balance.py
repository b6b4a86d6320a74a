"""Fleet-wide balance: many replicas, one Redis, real processes and the OpenAI SDK.

For every tokens_count_strategy (and for weights), 1000 requests of heavy-tailed prompt
sizes at concurrency 48, spread over 4 replicas that share one Redis, must leave the
counted quantity per target (per unit of weight) within 3%, as the upstream counted it,
and so must one replica alone on the embedded store. A low-traffic case shows
per-replica counters (what Kong does per worker) herding onto one target while the
fleet-wide balancer alternates. How far apart independent per-replica counters drift
under load is a measurement, not a test: ``bench/run.py`` reports balance.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cluster.fleet import (
    Scenario,
    counted_per_model,
    fleet_config,
    heavy_tailed_prompts,
    imbalance,
    run_load,
    running_fleet,
)

pytestmark = pytest.mark.cluster

REQUESTS = 1000
CONCURRENCY = 48
REPLICAS = 4
#: The low-traffic case: many replicas, each seeing only a few requests.
QUIET_REPLICAS = 8
QUIET_ROUNDS = 3
MAX_IMBALANCE = 0.03

SCENARIOS = (
    Scenario("prompt", "prompt-tokens", ("prompt-a", "prompt-b")),
    Scenario("completion", "completion-tokens", ("completion-a", "completion-b")),
    Scenario("total", "total-tokens", ("total-a", "total-b")),
    Scenario("cost", "cost", ("cost-a", "cost-b"), prices=((10.0, 30.0), (5.0, 15.0))),
    Scenario("weighted", "total-tokens", ("weighted-a", "weighted-b"), weights=(300, 100)),
)
QUIET = Scenario("quiet", "total-tokens", ("quiet-a", "quiet-b"))


@dataclass
class Fleet:
    mock_url: str
    shared: list[int]
    local: list[int]
    results: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet")
    with running_fleet(
        logs,
        lambda mock_port: fleet_config((*SCENARIOS, QUIET), mock_port),
        shared=QUIET_REPLICAS,
        local=QUIET_REPLICAS,
        # A little upstream latency keeps ~48 requests in flight, as with a real LLM.
        mocks=[("--latency-ms", "10")],
    ) as started:
        yield Fleet(
            mock_url=f"http://127.0.0.1:{started.mock_ports[0]}",
            shared=started.shared_ports,
            local=started.local_ports,
            results=logs / "fleet-results.json",
        )


def _measure(fleet: Fleet, ports: list[int], scenario: Scenario, prompts: list[str]) -> float:
    httpx.post(f"{fleet.mock_url}/mock/reset", timeout=5).raise_for_status()
    failures = asyncio.run(run_load(ports, scenario.name, prompts, CONCURRENCY))
    assert failures == []
    stats = httpx.get(f"{fleet.mock_url}/mock/stats", timeout=5).json()["by_model"]
    assert sum(stats[m]["requests"] for m in scenario.models) == len(prompts)
    return imbalance(counted_per_model(stats, scenario), scenario)


def _report(fleet: Fleet, name: str, values: dict[str, float]) -> None:
    results = json.loads(fleet.results.read_text()) if fleet.results.exists() else {}
    results[name] = values
    fleet.results.write_text(json.dumps(results, indent=2))
    print(f"\n{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fleet_wide_balance_within_three_percent(fleet: Fleet, scenario: Scenario) -> None:
    # The same prompts on every run (str hashes change per process), so results compare.
    prompts = heavy_tailed_prompts(REQUESTS, seed=zlib.crc32(scenario.name.encode()))
    fleet_wide = _measure(fleet, fleet.shared[:REPLICAS], scenario, prompts)
    embedded = _measure(fleet, fleet.local[:1], scenario, prompts)
    _report(fleet, scenario.name, {"fleet_wide": fleet_wide, "embedded_alone": embedded})
    assert fleet_wide <= MAX_IMBALANCE, f"fleet-wide imbalance {fleet_wide:.2%}"
    # Parity: one replica on the embedded store balances as the fleet does on Redis.
    assert embedded <= MAX_IMBALANCE, f"embedded-store imbalance {embedded:.2%}"


def _quiet_traffic(fleet: Fleet, ports: list[int]) -> dict[str, int]:
    """A few identical requests per replica, one at a time: requests per model."""
    httpx.post(f"{fleet.mock_url}/mock/reset", timeout=5).raise_for_status()
    body = {"model": "any", "messages": [{"role": "user", "content": "same size every time"}]}
    with httpx.Client(timeout=10) as client:
        for _ in range(QUIET_ROUNDS):
            for port in ports:
                response = client.post(f"http://127.0.0.1:{port}/quiet/chat/completions", json=body)
                assert response.status_code == 200, response.text
    stats = httpx.get(f"{fleet.mock_url}/mock/stats", timeout=5).json()["by_model"]
    return {model: stats.get(model, {}).get("requests", 0) for model in QUIET.models}


def test_low_traffic_does_not_herd(fleet: Fleet) -> None:
    """8 replicas, 3 requests each: per-replica counters all start on the first target
    (Kong's deterministic lowest-usage), the fleet-wide balancer alternates."""
    total = QUIET_ROUNDS * QUIET_REPLICAS
    fleet_wide = _quiet_traffic(fleet, fleet.shared)
    per_replica = _quiet_traffic(fleet, fleet.local)
    _report(
        fleet,
        "quiet",
        {
            "fleet_wide_share_a": fleet_wide["quiet-a"] / total,
            "local_counters_share_a": per_replica["quiet-a"] / total,
        },
    )
    assert abs(fleet_wide["quiet-a"] - fleet_wide["quiet-b"]) <= 1
    # Every replica alone sends its 1st and 3rd request to the first target: 2/3 herd.
    assert per_replica["quiet-a"] == 2 * QUIET_REPLICAS
