"""The aggregator worker in-process against a real redis-server.

Events are produced the way a proxy produces them (``RedisStore.select`` then ``settle``
with a ``UsageEvent``, which appends it in record_usage.lua); one or several
``Aggregator`` instances then make passes with ``run_once()``, and the results are read
back the way ``tokenlb stats`` and the admin port read them (``RedisStore.rollups`` and
``totals``, ``fleet.aggregator_health``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tokenlb_aggregator.settings import aggregator_settings
from tokenlb_aggregator.sink import LogSink
from tokenlb_aggregator.spans import SpanEmitter
from tokenlb_aggregator.worker import Aggregator
from tokenlb_proxy.events import EVENT_FIELD, UsageEvent
from tokenlb_proxy.fleet import aggregator_health
from tokenlb_proxy.keys import AGGREGATORS_KEY, aggregator_heartbeat_key, balancer_keys
from tokenlb_proxy.rollups import TargetRollup, latency_bucket, merge_rollups
from tokenlb_proxy.stats_log import kong_log_record
from tokenlb_proxy.store import Candidate, RedisStore, Settlement
from tokenlb_proxy.store.redis import connect_redis

BALANCER = "worker-tests"
KEYS = balancer_keys(BALANCER)
GROUP = "tokenlb-aggregators"
TARGETS = {
    "t-a": {"model": "openai/gpt-4o", "weight": 1, "url": "http://a.test:8080/v1", "index": 0},
    "t-b": {"model": "openai/gpt-4o-mini", "weight": 1, "url": "http://b.test/v1", "index": 1},
}
#: Decay over a test is below 1e-9 relative.
LONG_HALF_LIFE_MS = 10**11


class Fleet:
    """A Redis with one registered balancer, a proxy's store, and aggregators on it."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.client = connect_redis(redis_url)
        self.store = RedisStore(self.client)
        self.half_life_ms = LONG_HALF_LIFE_MS
        self._open: list[Aggregator] = []
        self._served = 0

    def aggregator(
        self,
        name: str = "agg-1",
        *,
        sink: LogSink | None = None,
        spans: SpanEmitter | None = None,
        **overrides: Any,
    ) -> Aggregator:
        settings = aggregator_settings(
            environ={},
            redis_url=self.redis_url,
            name=name,
            discover_interval_ms=overrides.pop("discover_interval_ms", 0),
            claim_idle_ms=overrides.pop("claim_idle_ms", 60_000),
            **overrides,
        )
        aggregator = Aggregator(settings, sink=sink or LogSink("none"), spans=spans)
        self._open.append(aggregator)
        return aggregator

    async def close(self, aggregator: Aggregator) -> None:
        self._open.remove(aggregator)
        await aggregator.close()

    async def close_all(self) -> None:
        for aggregator in list(self._open):
            await self.close(aggregator)
        await self.client.aclose()

    async def register(self) -> None:
        await self.store.register(BALANCER, KEYS, {t: json.dumps(d) for t, d in TARGETS.items()})

    async def serve(
        self,
        target: str = "t-a",
        *,
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        cost: float = 0.125,
        error: str = "",
        upstream_ms: float = 40.0,
        final: bool = True,
        log_statistics: bool = True,
        request_payload: str | None = None,
    ) -> UsageEvent:
        """One attempt as the proxy runs it: choose ``target``, then settle with its event."""
        candidates = [
            Candidate(target_id=t, weight=1, estimate=15.0, eligible=t == target) for t in TARGETS
        ]
        selection = await self.store.select(KEYS, "lowest-usage", self.half_life_ms, candidates)
        assert selection.index == list(TARGETS).index(target)
        self._served += 1
        end_ms = time.time() * 1000
        event = UsageEvent(
            balancer=BALANCER,
            target=target,
            target_label=str(TARGETS[target]["model"]),
            provider="openai",
            request_model="gpt-4o",
            response_model=None if error else str(TARGETS[target]["model"]).split("/")[1],
            algorithm="lowest-usage",
            strategy="total-tokens",
            score=selection.score,
            final=final,
            status=500 if error else 200,
            error=error,
            start_ms=end_ms - upstream_ms,
            end_ms=end_ms,
            upstream_ms=upstream_ms,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            trace_id=f"{self._served:032x}",
            span_id=f"{self._served:016x}",
            request_span_id=f"{self._served + 1000:016x}",
            request_start_ms=end_ms - upstream_ms - 2,
            log_statistics=log_statistics,
            request_payload=request_payload,
        )
        actual = 0.0 if error else float(prompt_tokens + completion_tokens)
        settlement = Settlement(
            target_id=target,
            reserved=15.0,
            reserved_at_ms=selection.reserved_at_ms,
            actual=actual,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            failed=bool(error),
            backend="redis",
            event=event,
        )
        await self.store.settle(KEYS, self.half_life_ms, settlement)
        return event

    async def rolled_up(self) -> dict[str, TargetRollup]:
        """Every target's rollup counters over the minutes around now."""
        minute = int(time.time() // 60)
        return merge_rollups(await self.store.rollups(KEYS, range(minute - 2, minute + 2)))

    async def pending(self) -> dict[str, int]:
        """Unacknowledged entries per consumer."""
        summary: Any = await self.client.xpending(KEYS.events, GROUP)
        return {str(c["name"]): int(c["pending"]) for c in summary["consumers"]}

    async def stream_ids(self) -> list[str]:
        entries = await self.client.xrange(KEYS.events)
        return [str(entry_id) for entry_id, _ in entries or []]

    async def epoch_ms(self) -> int:
        value = await self.client.hget(KEYS.meta, "epoch_ms")
        assert value is not None
        return int(value)

    async def raw_usage(self) -> dict[str, float]:
        members = await self.client.zrange(KEYS.usage, 0, -1, withscores=True)
        return dict(cast("list[tuple[str, float]]", members))


@pytest.fixture
async def fleet(redis_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis_url, tmp_path)
    await fleet.register()
    try:
        yield fleet
    finally:
        await fleet.close_all()


def counters(rollup: TargetRollup) -> tuple[int, int, int, int]:
    return (rollup.requests, rollup.errors, rollup.prompt_tokens, rollup.completion_tokens)


async def assert_rollups_match_totals(fleet: Fleet, requests: int) -> None:
    """What the aggregators rolled up is exactly what the proxies settled."""
    rollups = await fleet.rolled_up()
    totals = await fleet.store.totals(KEYS, fleet.half_life_ms, list(TARGETS))
    assert sum(r.requests for r in rollups.values()) == requests
    for target, settled in totals.items():
        rollup = rollups.get(target, TargetRollup())
        assert counters(rollup) == (
            settled.requests,
            settled.errors,
            settled.prompt_tokens,
            settled.completion_tokens,
        ), target
        assert rollup.cost == pytest.approx(settled.cost, rel=1e-12), target
        assert sum(rollup.latency.values()) == settled.requests, target


# Applying events -------------------------------------------------------------------------


async def test_a_pass_rolls_up_exactly_what_was_settled(fleet: Fleet) -> None:
    await fleet.serve("t-a", prompt_tokens=10, completion_tokens=5, upstream_ms=40.0)
    await fleet.serve("t-a", prompt_tokens=20, completion_tokens=7, upstream_ms=400.0)
    await fleet.serve("t-a", prompt_tokens=3, completion_tokens=0, cost=0.0, error="timeout")
    await fleet.serve("t-b", prompt_tokens=1, completion_tokens=1, cost=2.5e-06)
    await fleet.serve("t-b", prompt_tokens=8, completion_tokens=2, upstream_ms=1000.0)
    aggregator = fleet.aggregator()

    assert await aggregator.run_once() == 5

    rollups = await fleet.rolled_up()
    assert counters(rollups["t-a"]) == (3, 1, 33, 12)
    assert counters(rollups["t-b"]) == (2, 0, 9, 3)
    assert rollups["t-a"].latency == {latency_bucket(40.0): 2, latency_bucket(400.0): 1}
    assert rollups["t-b"].latency_percentile(1.0) == 1024.0
    await assert_rollups_match_totals(fleet, 5)
    assert await fleet.pending() == {}
    assert (aggregator.stats.applied, aggregator.stats.skipped) == (5, 0)


async def test_passes_never_count_an_event_twice(fleet: Fleet) -> None:
    for _ in range(3):
        await fleet.serve("t-a")
    aggregator = fleet.aggregator()

    assert await aggregator.run_once() == 3
    assert await aggregator.run_once() == 0
    await assert_rollups_match_totals(fleet, 3)

    await fleet.serve("t-b", prompt_tokens=100)
    assert await aggregator.run_once() == 1
    assert await aggregator.run_once() == 0
    await assert_rollups_match_totals(fleet, 4)
    assert (await fleet.rolled_up())["t-b"].prompt_tokens == 100


async def test_two_aggregators_share_the_stream_without_double_counting(fleet: Fleet) -> None:
    first = fleet.aggregator("agg-1", batch_size=2)
    second = fleet.aggregator("agg-2", batch_size=2)
    for _ in range(7):
        await fleet.serve("t-a")

    applied = 0
    for _ in range(4):
        applied += await first.run_once() + await second.run_once()

    assert applied == 7
    assert first.stats.applied > 0
    assert second.stats.applied > 0
    await assert_rollups_match_totals(fleet, 7)


async def test_a_crashed_aggregators_events_are_taken_over_once(
    fleet: Fleet, tmp_path: Path
) -> None:
    for target in ("t-a", "t-b", "t-a"):
        await fleet.serve(target)
    crashed_log, survivor_log = tmp_path / "crashed.log", tmp_path / "survivor.log"
    crashed = fleet.aggregator("crashed", sink=LogSink(str(crashed_log)))
    await crashed._discover()
    balancer = crashed._balancers[BALANCER]
    # It read the events, then died before applying them: they stay pending on it.
    entries = await crashed._read(balancer)
    assert len(entries) == 3
    assert await fleet.pending() == {"crashed": 3}

    # A survivor waits claim_idle_ms before taking over: not yet.
    patient = fleet.aggregator("patient")
    assert await patient.run_once() == 0
    assert await fleet.pending() == {"crashed": 3}
    assert await fleet.rolled_up() == {}

    survivor = fleet.aggregator("survivor", claim_idle_ms=0, sink=LogSink(str(survivor_log)))
    assert await survivor.run_once() == 3
    assert await fleet.pending() == {}
    await assert_rollups_match_totals(fleet, 3)
    assert len(survivor_log.read_bytes().splitlines()) == 3

    # The "dead" one comes back and finishes its batch: nothing is counted or logged again.
    assert await crashed._apply(balancer, entries) == 0
    crashed.sink.flush()
    assert crashed.stats.skipped == 3
    await assert_rollups_match_totals(fleet, 3)
    assert crashed_log.read_bytes() == b""


async def test_malformed_entries_are_acknowledged_and_do_not_block(fleet: Fleet) -> None:
    aggregator = fleet.aggregator(batch_size=2)
    await aggregator.run_once()  # creates the group
    await fleet.client.xadd(KEYS.events, {EVENT_FIELD: "not json"})
    await fleet.client.xadd(KEYS.events, {"other": "field"})
    await fleet.client.xadd(KEYS.events, {EVENT_FIELD: json.dumps({"balancer": BALANCER})})
    await fleet.serve("t-b", prompt_tokens=42)

    # Two per read: the first pass finds only junk, the second junk and the real event.
    assert await aggregator.run_once() == 0
    assert await aggregator.run_once() == 1
    assert await aggregator.run_once() == 0

    assert aggregator.stats.malformed == 3
    assert aggregator.stats.applied == 1
    assert await fleet.pending() == {}
    await assert_rollups_match_totals(fleet, 1)
    assert (await fleet.rolled_up())["t-b"].prompt_tokens == 42


@pytest.mark.parametrize("claiming", [True, False], ids=["claim-first", "read-only-pass"])
async def test_an_aggregator_survives_its_redis_losing_the_stream(
    fleet: Fleet, claiming: bool
) -> None:
    # A Redis restarted without persistence (docker-compose.yml's) loses the stream and
    # the consumer group; the proxies' next settle recreates the stream without a group.
    # A pass claims (XAUTOCLAIM) before it reads (XREADGROUP) every discover interval.
    aggregator = fleet.aggregator(discover_interval_ms=0 if claiming else 3_600_000)
    await fleet.serve("t-a")
    assert await aggregator.run_once() == 1

    await fleet.client.flushall()
    await fleet.serve("t-b")
    # No crash (NOGROUP): the group is made again, from the new stream's start. When the
    # pass claimed first, the claim made it and the read found the event at once.
    assert await aggregator.run_once() == (1 if claiming else 0)
    await fleet.serve("t-b")
    assert await aggregator.run_once() == (1 if claiming else 2)

    assert counters((await fleet.rolled_up())["t-b"]) == (2, 0, 20, 10)
    assert "t-a" not in await fleet.rolled_up()
    assert await fleet.pending() == {}


# Trimming, heartbeat ---------------------------------------------------------------------


async def test_trim_removes_acknowledged_entries_and_keeps_pending_ones(fleet: Fleet) -> None:
    worker = fleet.aggregator("worker", batch_size=2)
    crashed = fleet.aggregator("crashed", batch_size=2)
    for _ in range(6):
        await fleet.serve("t-a")
    ids = await fleet.stream_ids()

    # worker applies 1-2 (its first pass trims up to the last delivered entry, id 2);
    # crashed reads 3-4 and never acknowledges them; worker applies 5-6.
    assert await worker.run_once() == 2
    assert await fleet.stream_ids() == ids[1:]
    await crashed._discover()
    assert len(await crashed._read(crashed._balancers[BALANCER])) == 2
    assert await worker.run_once() == 2
    assert await fleet.client.xlen(KEYS.events) == 5

    await worker._trim()

    # Everything before the oldest pending entry went; the pending ones stay for a taker.
    assert await fleet.client.xlen(KEYS.events) == 4
    assert await fleet.stream_ids() == ids[2:]
    assert await fleet.pending() == {"crashed": 2}

    taker = fleet.aggregator("taker", claim_idle_ms=0)
    assert await taker.run_once() == 2  # its first pass trims too: nothing is pending now
    assert await fleet.stream_ids() == ids[-1:]
    await assert_rollups_match_totals(fleet, 6)


async def test_heartbeat_announces_the_aggregator_and_close_retracts_it(fleet: Fleet) -> None:
    aggregator = fleet.aggregator("beating", heartbeat_ttl_s=7)
    await fleet.serve("t-a")
    before_ms = time.time() * 1000

    await aggregator.run_once()

    raw_beat = await fleet.client.get(aggregator_heartbeat_key("beating"))
    assert raw_beat is not None
    beat = json.loads(raw_beat)
    assert beat["applied"] == 1
    assert beat["malformed"] == beat["skipped"] == 0
    assert beat["balancers"] == 1
    assert 0 < await fleet.client.ttl(aggregator_heartbeat_key("beating")) <= 7
    score = await fleet.client.zscore(AGGREGATORS_KEY, "beating")
    assert score is not None
    assert before_ms - 1 <= score <= time.time() * 1000 + 1

    await fleet.close(aggregator)

    assert await fleet.client.exists(aggregator_heartbeat_key("beating")) == 0
    assert await fleet.client.zscore(AGGREGATORS_KEY, "beating") is None


async def test_aggregator_health_shows_the_living_and_the_backlog(fleet: Fleet) -> None:
    other = balancer_keys("never-served")
    await fleet.serve("t-a")
    await fleet.serve("t-b")

    # The proxies appended events, but no aggregator made the group yet.
    health = await aggregator_health(fleet.client, [KEYS, other])
    assert health["alive"] == []
    assert health["streams"][KEYS.events] == {"length": 2, "lag": None, "pending": 0}
    assert health["streams"][other.events] == {"length": 0, "lag": None, "pending": 0}
    assert (health["lag"], health["pending"]) == (0, 0)

    slow = fleet.aggregator("slow", batch_size=1)
    await slow._discover()
    await slow._read(slow._balancers[BALANCER])
    await slow._heartbeat()
    health = await aggregator_health(fleet.client, [KEYS, other])
    assert [a["name"] for a in health["alive"]] == ["slow"]
    assert health["streams"][KEYS.events] == {"length": 2, "lag": 1, "pending": 1}
    assert (health["lag"], health["pending"]) == (1, 1)

    fast = fleet.aggregator("fast", claim_idle_ms=0)
    await fast.run_once()
    health = await aggregator_health(fleet.client, [KEYS, other])
    alive = {a["name"]: a for a in health["alive"]}
    assert set(alive) == {"slow", "fast"}
    assert alive["fast"]["applied"] == 2
    assert alive["slow"]["applied"] == 0
    assert health["streams"][KEYS.events]["lag"] == 0
    assert health["streams"][KEYS.events]["pending"] == 0
    assert (health["lag"], health["pending"]) == (0, 0)

    await fleet.close(fast)
    health = await aggregator_health(fleet.client, [KEYS])
    assert [a["name"] for a in health["alive"]] == ["slow"]

    # An unread entry deleted by hand leaves Redis unable to count the lag.
    await fleet.serve("t-a")
    await fleet.serve("t-a")
    await fleet.client.xdel(KEYS.events, (await fleet.stream_ids())[-2])
    health = await aggregator_health(fleet.client, [KEYS])
    assert health["streams"][KEYS.events] == {"length": 2, "lag": None, "pending": 0}
    assert health["lag"] == 0


# Kong log lines --------------------------------------------------------------------------


async def test_log_sink_gets_one_kong_line_per_logged_request(fleet: Fleet, tmp_path: Path) -> None:
    log_file = tmp_path / "kong.log"
    aggregator = fleet.aggregator(sink=LogSink(str(log_file)))
    logged = [
        await fleet.serve("t-a", prompt_tokens=11, completion_tokens=4),
        await fleet.serve("t-b", request_payload='{"messages": []}'),
    ]
    # A failed-over attempt (not final) and a target without log_statistics: no line.
    await fleet.serve("t-a", error="http_500", final=False, cost=0.0)
    await fleet.serve("t-b", log_statistics=False)
    logged.append(await fleet.serve("t-a", prompt_tokens=1, completion_tokens=2))

    assert await aggregator.run_once() == 5
    assert await aggregator.run_once() == 0  # nothing logged twice

    lines = log_file.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == [msgspec.json.decode(msgspec.json.encode(kong_log_record(e))) for e in logged]
    first = records[0]["ai"]["proxy"]
    assert first["meta"]["plugin_id"] == BALANCER
    assert first["meta"]["response_model"] == "gpt-4o"
    assert first["usage"]["total_tokens"] == 15
    assert "payload" not in first
    assert records[1]["ai"]["proxy"]["payload"] == {"request": '{"messages": []}', "response": None}


async def test_applied_events_are_exported_as_spans_once(fleet: Fleet) -> None:
    exporter = InMemorySpanExporter()
    aggregator = fleet.aggregator(spans=SpanEmitter(exporter))
    failed_over = await fleet.serve("t-b", error="http_500", final=False, cost=0.0)
    answered = await fleet.serve("t-a")
    await aggregator._discover()
    balancer = aggregator._balancers[BALANCER]
    entries = await aggregator._read(balancer)

    assert await aggregator._apply(balancer, entries) == 2
    assert await aggregator._apply(balancer, entries) == 0  # applied elsewhere: no spans
    assert aggregator.spans is not None
    aggregator.spans.flush()

    spans = exporter.get_finished_spans()
    assert sorted((s.name, s.kind) for s in spans) == [
        ("chat gpt-4o", SpanKind.CLIENT),
        ("chat gpt-4o-mini", SpanKind.CLIENT),
        ("tokenlb chat", SpanKind.SERVER),
    ]
    attempts = {
        dict(s.attributes or {})["tokenlb.target_id"]: s for s in spans if s.kind is SpanKind.CLIENT
    }
    a, b = (dict(attempts[t].attributes or {}) for t in ("t-a", "t-b"))
    # server.address comes from the target URL the proxies registered.
    assert (a["server.address"], a["server.port"]) == ("a.test", 8080)
    assert b["server.address"] == "b.test"
    assert "server.port" not in b
    assert b["error.type"] == "http_500"
    ids = {s.context.span_id for s in spans if s.context is not None}
    assert int(answered.span_id, 16) in ids
    assert int(failed_over.span_id, 16) in ids


# Decay epoch -----------------------------------------------------------------------------


async def test_roll_epochs_moves_an_old_epoch_without_changing_usage(fleet: Fleet) -> None:
    await fleet.serve("t-a", prompt_tokens=300, completion_tokens=100)
    await fleet.serve("t-b", prompt_tokens=50, completion_tokens=50)
    aggregator = fleet.aggregator()
    await aggregator.run_once()
    # Pretend the balancer has been running for three half-lives since its epoch.
    epoch = await fleet.epoch_ms()
    old_epoch = epoch - 3 * LONG_HALF_LIFE_MS
    await fleet.client.hset(KEYS.meta, "epoch_ms", old_epoch)
    raw_before = await fleet.raw_usage()
    usage_before = await usage_now(fleet, list(TARGETS))
    assert usage_before["t-a"] == pytest.approx(400.0 / 8, rel=1e-6)

    await aggregator.roll_epochs()

    new_epoch = await fleet.epoch_ms()
    assert new_epoch >= epoch
    raw_after = await fleet.raw_usage()
    shrink = 2.0 ** (-(new_epoch - old_epoch) / LONG_HALF_LIFE_MS)
    assert raw_after == pytest.approx({t: s * shrink for t, s in raw_before.items()}, rel=1e-12)
    assert await usage_now(fleet, list(TARGETS)) == pytest.approx(usage_before, rel=1e-9)

    # Right after, less than a half-life has passed: the next roll leaves it alone.
    await aggregator.roll_epochs()
    assert await fleet.epoch_ms() == new_epoch


async def usage_now(fleet: Fleet, targets: Sequence[str]) -> dict[str, float]:
    totals = await fleet.store.totals(KEYS, fleet.half_life_ms, list(targets))
    return {target: t.usage for target, t in totals.items()}


async def test_roll_epochs_runs_in_a_pass(fleet: Fleet) -> None:
    await fleet.serve("t-a")
    await fleet.client.hset(KEYS.meta, "epoch_ms", 1_000)  # ~1.7e12 ms ago: 17 half-lives
    aggregator = fleet.aggregator()

    await aggregator.run_once()

    assert await fleet.epoch_ms() > time.time() * 1000 - 60_000
