"""Redis dies under load: the fleet keeps serving, says so, and rejoins when it returns.

Two replicas share one redis-server and take steady traffic from the OpenAI SDK (with an
aggregator running beside them). Then Redis fails for 6 s, in one of two ways:

- ``kill``: SIGKILL, then a new redis-server on the same port, empty (no persistence).
  Connections are refused at once, so no request should notice anything.
- ``freeze``: SIGSTOP, then SIGCONT, data intact. The kernel still accepts connections
  and nothing answers: the requests in flight at that instant wait out the client's
  socket timeout (1 s), and no request after them waits at all.

Nothing a client sends may fail; ``/status`` must say degraded during the outage and not
after; each replica logs one warning per outage, not one per request; after Redis
returns the replicas decide through it again, the aggregator applies the new events and
those of the requests served during the outage, and the balance of counted tokens over
the requests sent since Redis returned is within 2% of even within 30 s.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cluster.fleet import Scenario, counted_per_model, heavy_tailed_prompts, write_config
from tests.cluster.steady_load import Outcome, SteadyLoad, percentile
from tests.support import ManagedProcess, start_mock, start_proxies, start_redis, tokenlb_command
from tokenlb_proxy.keys import balancer_keys

pytestmark = pytest.mark.cluster

SCENARIO = Scenario("outage", "total-tokens", ("outage-a", "outage-b"))
REPLICAS = 2
RATE = 60.0  # requests per second, all replicas together
CONCURRENCY = 16
WARM_S = 5.0
OUTAGE_S = 6.0
RECOVERY_WINDOW_S = 30.0
MAX_IMBALANCE = 0.02
#: The proxy's Redis socket timeout is 1 s: the longest a request may wait on a frozen Redis.
MAX_OUTAGE_LATENCY_MS = {"kill": 1000.0, "freeze": 1500.0}
#: Requests that may wait out that timeout: only those already waiting on Redis when it
#: froze (at most the load's concurrency), never the ones after (a killed Redis: none).
MAX_STALLED = {"kill": 0, "freeze": CONCURRENCY}
UNREACHABLE = "Redis is unreachable"
REACHABLE_AGAIN = "Redis is reachable again"


@dataclass
class Outage:
    redis: ManagedProcess
    redis_port: int
    mock_url: str
    proxies: list[ManagedProcess]
    ports: list[int]
    admin_ports: list[int]
    aggregator: ManagedProcess
    logs: Path
    extra: list[ManagedProcess] = field(default_factory=list)


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    processes: list[ManagedProcess] = []
    try:
        redis_proc, redis_port = start_redis(tmp_path)
        processes.append(redis_proc)
        mock, mock_port = start_mock(tmp_path, "--latency-ms", "20")
        processes.append(mock)
        config = write_config(tmp_path / "kong.yaml", [SCENARIO], mock_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        replicas = start_proxies(tmp_path, config, REPLICAS, redis_url=redis_url)
        processes += [p for p, _, _ in replicas]
        aggregator = ManagedProcess(
            "aggregator",
            tokenlb_command("aggregator", "--redis-url", redis_url, "--log-sink", "none"),
            tmp_path,
            env={"OTEL_TRACES_EXPORTER": "none"},
        )
        processes.append(aggregator)
        state = Outage(
            redis=redis_proc,
            redis_port=redis_port,
            mock_url=f"http://127.0.0.1:{mock_port}",
            proxies=[p for p, _, _ in replicas],
            ports=[port for _, port, _ in replicas],
            admin_ports=[admin for _, _, admin in replicas],
            aggregator=aggregator,
            logs=tmp_path,
        )
        yield state
        processes += state.extra
    finally:
        for proc in reversed(processes):
            proc.stop()


def _status(admin_port: int) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{admin_port}/status", timeout=10)
    response.raise_for_status()
    status: dict[str, Any] = response.json()
    return status


def _mock_counted(mock_url: str) -> dict[str, float]:
    stats = httpx.get(f"{mock_url}/mock/stats", timeout=5).json()["by_model"]
    return counted_per_model(stats, SCENARIO)


def _imbalance(now: dict[str, float], base: dict[str, float]) -> float:
    delta = [now[m] - base[m] for m in SCENARIO.models]
    return (max(delta) - min(delta)) / max(delta) if max(delta) > 0 else 1.0


def _latencies(outcomes: list[Outcome], start: float, end: float) -> dict[str, float]:
    seconds = [o.seconds for o in outcomes if start <= o.started < end]
    return {
        "requests": len(seconds),
        "p50_ms": percentile(seconds, 0.5) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds, default=0.0) * 1000,
        "over_500ms": sum(1 for v in seconds if v > 0.5),
    }


def _redis_requests(port: int) -> int:
    """Requests settled through Redis (its totals hash; it restarted empty)."""
    client = redis.Redis(port=port, decode_responses=True)
    try:
        totals = client.hgetall(balancer_keys(f"route:{SCENARIO.name}").totals)
    finally:
        client.close()
    return sum(int(v) for k, v in totals.items() if k.endswith(":requests"))


def _rollup_requests(port: int, since_s: float) -> int:
    """Requests the aggregator applied to the per-minute rollups since ``since_s``."""
    client = redis.Redis(port=port, decode_responses=True)
    keys = balancer_keys(f"route:{SCENARIO.name}")
    try:
        total = 0
        for minute in range(int(since_s // 60), int(time.time() // 60) + 1):
            fields = client.hgetall(keys.rollup(minute))
            total += sum(int(v) for k, v in fields.items() if k.endswith(":requests"))
        return total
    finally:
        client.close()


@pytest.mark.parametrize("failure", ["kill", "freeze"])
def test_replicas_survive_a_redis_outage_and_rejoin(outage: Outage, failure: str) -> None:
    started_wall = time.time()
    prompts = heavy_tailed_prompts(500, seed=11)
    load = SteadyLoad(
        outage.ports, SCENARIO.name, prompts, rate=RATE, concurrency=CONCURRENCY
    ).start()
    try:
        time.sleep(WARM_S)
        assert not any(_status(a)["degraded"] for a in outage.admin_ports)

        # --- the outage --------------------------------------------------------------
        in_redis_before = _redis_requests(outage.redis_port)
        killed_at = time.monotonic()
        if failure == "kill":
            outage.redis.kill()
        else:
            outage.redis.process.send_signal(signal.SIGSTOP)
        seen_degraded = {a: False for a in outage.admin_ports}
        while time.monotonic() < killed_at + OUTAGE_S:
            for admin in outage.admin_ports:
                status = _status(admin)
                if status["degraded"]:
                    assert status["redis"]["reachable"] is False
                    seen_degraded[admin] = True
            time.sleep(0.25)
        assert all(seen_degraded.values()), seen_degraded

        # --- Redis returns (empty after a kill) ------------------------------------
        if failure == "kill":
            restarted, _ = start_redis(outage.logs, outage.redis_port)
            outage.extra.append(restarted)
        else:
            outage.redis.process.send_signal(signal.SIGCONT)
            in_redis_before = _redis_requests(outage.redis_port)
        restarted_at = time.monotonic()
        base = _mock_counted(outage.mock_url)
        rejoined_at: float | None = None
        samples: list[tuple[float, float]] = []
        while time.monotonic() < restarted_at + RECOVERY_WINDOW_S:
            time.sleep(0.5)
            if rejoined_at is None and not any(_status(a)["degraded"] for a in outage.admin_ports):
                rejoined_at = time.monotonic()
            elapsed = time.monotonic() - restarted_at
            samples.append((elapsed, _imbalance(_mock_counted(outage.mock_url), base)))
    finally:
        outcomes = load.stop()

    failures = [o for o in outcomes if o.error is not None]
    assert not failures, f"{len(failures)} failed requests, first: {failures[0]}"
    assert rejoined_at is not None, "a replica still reports degraded 30 s after Redis returned"
    for admin in outage.admin_ports:
        status = _status(admin)
        assert status["degraded"] is False
        assert status["redis"]["reachable"] is True

    # One warning per outage per replica, no stack traces.
    for proxy in outage.proxies:
        log = proxy.output()
        assert log.count(UNREACHABLE) == 1, log[-3000:]
        assert log.count(REACHABLE_AGAIN) == 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]

    # New decisions go through Redis: every request started once both replicas had
    # rejoined was settled there (a killed Redis came back empty; a frozen one is
    # counted from the moment it resumed).
    after_rejoin = [o for o in outcomes if o.started >= rejoined_at]
    since_restart = [o for o in outcomes if o.started >= restarted_at - 1.0]
    in_redis = _redis_requests(outage.redis_port) - (in_redis_before if failure == "freeze" else 0)
    assert len(after_rejoin) <= in_redis <= len(since_restart), (
        len(after_rejoin),
        in_redis,
        len(since_restart),
    )

    # The aggregator came back too, and the usage events of the requests served during
    # the outage reached it late (appended when Redis returned). A killed Redis took the
    # earlier ones with it; a frozen one kept them, and may also run the few settles that
    # timed out when it resumed (those were counted locally as well).
    if failure == "kill":
        lower, upper = len([o for o in outcomes if o.started >= killed_at]), len(outcomes)
    else:
        lower, upper = len(outcomes), len(outcomes) + CONCURRENCY
    deadline = time.monotonic() + 20
    while True:
        applied = _rollup_requests(outage.redis_port, started_wall)
        if applied >= lower or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lower <= applied <= upper, (lower, applied, upper)
    assert outage.aggregator.alive()
    aggregator_log = outage.aggregator.output()
    assert aggregator_log.count("Redis is unavailable") == 1, aggregator_log[-3000:]
    assert aggregator_log.count(REACHABLE_AGAIN) == 1, aggregator_log[-3000:]
    assert "Traceback" not in aggregator_log, aggregator_log[-3000:]

    # The balance of counted tokens over the requests since the restart.
    final = samples[-1][1]
    within = [t for t, value in samples if value <= MAX_IMBALANCE]
    stays_from = next(
        (t for i, (t, _) in enumerate(samples) if all(v <= MAX_IMBALANCE for _, v in samples[i:])),
        None,
    )
    baseline = _latencies(outcomes, killed_at - WARM_S + 1, killed_at)
    during = _latencies(outcomes, killed_at, restarted_at)
    after = _latencies(outcomes, restarted_at, restarted_at + 5)
    report = {
        "requests": len(outcomes),
        "rejoined_after_s": round(rejoined_at - restarted_at, 2),
        "balance_within_2pct_after_s": round(within[0], 2) if within else None,
        "balance_stays_within_2pct_after_s": round(stays_from, 2) if stays_from else None,
        "imbalance_at_30s": round(final, 4),
        "latency_before": baseline,
        "latency_during_outage": during,
        "latency_first_5s_after": after,
    }
    (outage.logs / f"outage-{failure}.json").write_text(json.dumps(report, indent=2))
    print(f"\nredis outage ({failure}):", json.dumps(report, indent=2))
    assert stays_from is not None, samples
    assert stays_from <= RECOVERY_WINDOW_S, samples
    # A dead Redis must not stall requests: at most one timed-out call's worth, and only
    # for the requests caught by the failure itself.
    assert during["max_ms"] < MAX_OUTAGE_LATENCY_MS[failure], during
    assert during["over_500ms"] <= MAX_STALLED[failure], during
