"""The aggregator's two Lua scripts against a real redis-server.

``apply_events.lua`` is driven the way an aggregator drives it: events are appended to a
balancer's stream, read with XREADGROUP, then applied through ``Aggregator._apply`` (or
raw, where the reply itself is checked). ``roll_epoch.lua`` is called raw, and its effect
is read back through ``RedisStore.totals`` as ``tokenlb stats`` does. Like
``test_scripts.py``, every test runs twice: with the script cache warm, and with
``SCRIPT FLUSH`` before every script call (redis-py's NOSCRIPT fallback must reload it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from tokenlb_aggregator.settings import aggregator_settings
from tokenlb_aggregator.sink import LogSink
from tokenlb_aggregator.worker import Aggregator, _Balancer
from tokenlb_proxy.events import EVENT_FIELD, UsageEvent, encode_event
from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.scripts import lua_source
from tokenlb_proxy.store import RedisStore
from tokenlb_proxy.store.redis import connect_redis

BALANCER = "agg-lua-tests"
KEYS = balancer_keys(BALANCER)
GROUP = "tokenlb-aggregators"
RETENTION_S = 4321
#: A minute well inside the Unix era; events end in it unless a test says otherwise.
MINUTE = 28_500_000
#: A half-life so long that decay during a test is below 1e-9 relative.
LONG_HALF_LIFE_MS = 10**11

_Entry = tuple[str, dict[str, str]]


def usage_event(
    target: str = "t1",
    *,
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    cost: float = 0.25,
    error: str = "",
    upstream_ms: float = 250.0,
    end_ms: float | None = None,
) -> UsageEvent:
    end = MINUTE * 60_000 + 30_000.0 if end_ms is None else end_ms
    return UsageEvent(
        balancer=BALANCER,
        target=target,
        target_label=f"openai/{target}-model",
        provider="openai",
        request_model="gpt-4o",
        algorithm="lowest-usage",
        strategy="total-tokens",
        status=502 if error else 200,
        error=error,
        start_ms=end - upstream_ms,
        end_ms=end,
        upstream_ms=upstream_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        trace_id="ab" * 16,
        span_id="cd" * 8,
        request_span_id="ef" * 8,
        request_start_ms=end - upstream_ms - 1,
    )


class Harness:
    """One balancer's stream and an aggregator applying it, as the worker does."""

    def __init__(self, client: aioredis.Redis, *, flush_before_each_call: bool) -> None:
        self.client = client
        self.flush_before_each_call = flush_before_each_call
        settings = aggregator_settings(
            environ={},
            redis_url="redis://unused",
            name="lua-tests",
            rollup_retention_s=RETENTION_S,
        )
        self.aggregator = Aggregator(settings, sink=LogSink("none"), spans=None, client=client)
        self.balancer = _Balancer(keys=KEYS, urls={})
        self.store = RedisStore(client)
        self._raw = {
            name: client.register_script(lua_source(name))
            for name in ("apply_events", "roll_epoch")
        }

    async def before_call(self) -> None:
        if self.flush_before_each_call:
            await self.client.script_flush()

    async def create_group(self) -> None:
        await self.client.xgroup_create(KEYS.events, GROUP, id="0", mkstream=True)

    async def append(self, *events: UsageEvent) -> list[str]:
        return [
            str(await self.client.xadd(KEYS.events, {EVENT_FIELD: encode_event(event)}))
            for event in events
        ]

    async def read(self, count: int = 100, consumer: str = "lua-tests") -> list[_Entry]:
        reply: Any = await self.client.xreadgroup(GROUP, consumer, {KEYS.events: ">"}, count=count)
        return [entry for _, entries in reply or [] for entry in entries]

    async def apply(self, entries: list[_Entry]) -> int:
        """``Aggregator._apply``: the worker's own call to apply_events.lua."""
        await self.before_call()
        return await self.aggregator._apply(self.balancer, entries)

    async def apply_raw(
        self, rollups: Sequence[str], events: Sequence[Sequence[str | int]]
    ) -> list[str]:
        """apply_events.lua with every ARGV as its header documents them."""
        args: list[str | int] = [GROUP, RETENTION_S, len(events)]
        for event in events:
            args += list(event)
        await self.before_call()
        reply = await self._raw["apply_events"](keys=[KEYS.events, *rollups], args=args)
        return [str(entry_id) for entry_id in reply]

    async def roll(self, min_half_lives: str = "1.0", client: aioredis.Redis | None = None) -> str:
        await self.before_call()
        script = self._raw["roll_epoch"]
        return str(await script(keys=[KEYS.usage, KEYS.meta], args=[min_half_lives], client=client))

    async def rollup(self, minute: int = MINUTE) -> dict[str, str]:
        return cast("dict[str, str]", await self.client.hgetall(KEYS.rollup(minute)))

    async def pending(self) -> int:
        summary: Any = await self.client.xpending(KEYS.events, GROUP)
        return int(summary["pending"])

    async def epoch_ms(self) -> int:
        value = await self.client.hget(KEYS.meta, "epoch_ms")
        assert value is not None
        return int(value)

    async def usage(self) -> dict[str, float]:
        members = await self.client.zrange(KEYS.usage, 0, -1, withscores=True)
        return dict(cast("list[tuple[str, float]]", members))

    async def decayed(self, targets: Sequence[str]) -> dict[str, float]:
        totals = await self.store.totals(KEYS, LONG_HALF_LIFE_MS, list(targets))
        return {target: t.usage for target, t in totals.items()}


async def server_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.fixture(params=["warm-script-cache", "script-flush-before-each-call"])
async def lua(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Harness]:
    client = connect_redis(redis_url)
    harness = Harness(client, flush_before_each_call=request.param != "warm-script-cache")
    try:
        yield harness
    finally:
        await harness.aggregator.close()  # closes the client too


# apply_events.lua ------------------------------------------------------------------------


async def test_events_are_added_to_the_minute_rollup_under_kong_field_names(
    lua: Harness,
) -> None:
    await lua.create_group()
    await lua.append(
        usage_event("t1", prompt_tokens=10, completion_tokens=20, cost=0.25, upstream_ms=250.0),
        usage_event("t1", prompt_tokens=7, completion_tokens=0, cost=0.0, error="http_502"),
        usage_event("t2", prompt_tokens=1, completion_tokens=2, cost=0.5, upstream_ms=100.0),
    )

    applied = await lua.apply(await lua.read())

    assert applied == 3
    # 250 ms lands in bucket 64 (2^(64/8) = 256 ms), 100 ms in bucket 54 (~107.6 ms).
    assert await lua.rollup() == {
        "t1:requests": "2",
        "t1:errors": "1",
        "t1:prompt_tokens": "17",
        "t1:completion_tokens": "20",
        "t1:cost": "0.25",
        "t1:lat:64": "2",
        "t2:requests": "1",
        "t2:prompt_tokens": "1",
        "t2:completion_tokens": "2",
        "t2:cost": "0.5",
        "t2:lat:54": "1",
    }
    ttl = await lua.client.ttl(KEYS.rollup(MINUTE))
    assert RETENTION_S - 5 <= ttl <= RETENTION_S
    assert await lua.pending() == 0
    assert lua.aggregator.stats.applied == 3


async def test_tiny_costs_in_exponent_notation_add_up(lua: Harness) -> None:
    await lua.create_group()
    await lua.append(usage_event(cost=2.5e-06), usage_event(cost=1e-07))

    assert await lua.apply(await lua.read()) == 2

    assert float((await lua.rollup())["t1:cost"]) == pytest.approx(2.6e-06, rel=1e-12)


async def test_reply_is_the_ids_applied_by_this_call(lua: Harness) -> None:
    await lua.create_group()
    ids = await lua.append(usage_event(), usage_event(), usage_event("t2"))
    await lua.read()
    rollup = KEYS.rollup(MINUTE)
    events: list[list[str | int]] = [
        [ids[0], 2, "t1", "0", 10, 20, "0.25", "lat:64"],
        [ids[1], 2, "t1", "1", 3, 0, "0.0", "lat:10"],
        [ids[2], 2, "t2", "0", 1, 1, "0.5", "lat:64"],
    ]

    first = await lua.apply_raw([rollup], events)
    counters = await lua.rollup()
    second = await lua.apply_raw([rollup], events)

    assert first == ids
    assert second == []
    assert await lua.rollup() == counters
    assert counters["t1:requests"] == "2"
    assert counters["t1:errors"] == "1"
    assert counters["t1:lat:10"] == "1"


async def test_applying_the_same_entries_twice_counts_them_once(lua: Harness) -> None:
    await lua.create_group()
    await lua.append(usage_event(), usage_event("t2"))
    entries = await lua.read()

    assert await lua.apply(entries) == 2
    counters = await lua.rollup()
    assert await lua.apply(entries) == 0

    assert await lua.rollup() == counters
    assert counters["t1:requests"] == counters["t2:requests"] == "1"
    assert lua.aggregator.stats.applied == 2
    assert lua.aggregator.stats.skipped == 2


async def test_an_entry_acknowledged_elsewhere_is_skipped(lua: Harness) -> None:
    # Another aggregator took the first entry over and applied it: it is acknowledged.
    await lua.create_group()
    ids = await lua.append(usage_event(prompt_tokens=100), usage_event(prompt_tokens=5))
    entries = await lua.read()
    assert await lua.client.xack(KEYS.events, GROUP, ids[0]) == 1

    assert await lua.apply(entries) == 1

    counters = await lua.rollup()
    assert (counters["t1:requests"], counters["t1:prompt_tokens"]) == ("1", "5")


async def test_the_same_id_twice_in_one_call_counts_once(lua: Harness) -> None:
    await lua.create_group()
    (entry_id,) = await lua.append(usage_event())
    await lua.read()
    event: list[str | int] = [entry_id, 2, "t1", "0", 10, 20, "0.25", "lat:64"]

    assert await lua.apply_raw([KEYS.rollup(MINUTE)], [event, event]) == [entry_id]

    counters = await lua.rollup()
    assert (counters["t1:requests"], counters["t1:prompt_tokens"]) == ("1", "10")


async def test_an_id_never_delivered_to_the_group_is_skipped_not_lost(lua: Harness) -> None:
    await lua.create_group()
    ids = await lua.append(usage_event(prompt_tokens=1), usage_event(prompt_tokens=1000))
    delivered = await lua.read(count=1)
    assert [entry_id for entry_id, _ in delivered] == ids[:1]
    undelivered = cast("list[_Entry]", await lua.client.xrange(KEYS.events, min=ids[1]))

    assert await lua.apply(delivered + undelivered) == 1
    assert (await lua.rollup())["t1:prompt_tokens"] == "1"
    # Never-delivered and unknown ids: XACK answers 0, nothing is counted.
    rollup = KEYS.rollup(MINUTE)
    unknown: list[str | int] = ["1-1", 2, "t1", "0", 5, 5, "1.0", "lat:1"]
    assert await lua.apply_raw([rollup], [unknown]) == []
    assert await lua.rollup() == {
        "t1:requests": "1",
        "t1:prompt_tokens": "1",
        "t1:completion_tokens": "20",
        "t1:cost": "0.25",
        "t1:lat:64": "1",
    }

    # The skipped entry is still the group's to read, and counts when it is.
    assert await lua.apply(await lua.read()) == 1
    assert (await lua.rollup())["t1:prompt_tokens"] == "1001"


async def test_events_of_different_minutes_go_to_their_own_rollups(lua: Harness) -> None:
    await lua.create_group()
    start = MINUTE * 60_000
    await lua.append(
        usage_event(end_ms=start + 59_999.9, prompt_tokens=1),
        usage_event(end_ms=start + 60_000.0, prompt_tokens=2),
        usage_event(end_ms=start + 5 * 60_000 + 1, prompt_tokens=4),
        usage_event(end_ms=start + 1.5, prompt_tokens=8),
    )

    assert await lua.apply(await lua.read()) == 4

    assert (await lua.rollup(MINUTE))["t1:prompt_tokens"] == "9"
    assert (await lua.rollup(MINUTE))["t1:requests"] == "2"
    assert (await lua.rollup(MINUTE + 1))["t1:prompt_tokens"] == "2"
    assert (await lua.rollup(MINUTE + 5))["t1:prompt_tokens"] == "4"
    assert await lua.rollup(MINUTE + 2) == {}
    for minute in (MINUTE, MINUTE + 1, MINUTE + 5):
        assert RETENTION_S - 5 <= await lua.client.ttl(KEYS.rollup(minute)) <= RETENTION_S


async def test_a_call_that_applies_nothing_creates_no_rollup(lua: Harness) -> None:
    await lua.create_group()
    ids = await lua.append(usage_event())
    await lua.read()
    await lua.client.xack(KEYS.events, GROUP, *ids)

    assert (
        await lua.apply_raw([KEYS.rollup(MINUTE)], [[ids[0], 2, "t1", "0", 1, 1, "0.1", "lat:1"]])
        == []
    )

    assert await lua.client.exists(KEYS.rollup(MINUTE)) == 0


# roll_epoch.lua --------------------------------------------------------------------------


async def seed(lua: Harness, usage: dict[str, float], half_lives_ago: float) -> int:
    """Usage stored at an epoch ``half_lives_ago`` half-lives back; returns that epoch."""
    epoch = await server_ms(lua.client) - round(half_lives_ago * LONG_HALF_LIFE_MS)
    await lua.client.hset(KEYS.meta, mapping={"epoch_ms": epoch, "half_life_ms": LONG_HALF_LIFE_MS})
    if usage:
        await lua.client.zadd(KEYS.usage, usage)
    return epoch


async def test_roll_without_meta_does_nothing(lua: Harness) -> None:
    await lua.client.zadd(KEYS.usage, {"a": 8.0, "b": 2.0})

    assert await lua.roll() == "0"

    assert await lua.usage() == {"b": 2.0, "a": 8.0}
    assert await lua.client.exists(KEYS.meta) == 0


async def test_roll_without_half_life_does_nothing(lua: Harness) -> None:
    # select_target.lua writes the epoch; only settling writes the half-life.
    epoch = await server_ms(lua.client) - 10 * LONG_HALF_LIFE_MS
    await lua.client.hset(KEYS.meta, "epoch_ms", epoch)
    await lua.client.zadd(KEYS.usage, {"a": 8.0})

    assert await lua.roll() == "0"

    assert await lua.client.hgetall(KEYS.meta) == {"epoch_ms": str(epoch)}
    assert await lua.usage() == {"a": 8.0}


@pytest.mark.parametrize(("half_lives_ago", "min_half_lives"), [(0.5, "1.0"), (0.9, "1"), (2, "3")])
async def test_roll_below_min_half_lives_does_nothing(
    lua: Harness, half_lives_ago: float, min_half_lives: str
) -> None:
    stored = {"a": 3.0, "b": 5.0}
    epoch = await seed(lua, stored, half_lives_ago)

    assert await lua.roll(min_half_lives) == "0"

    assert await lua.client.hget(KEYS.meta, "epoch_ms") == str(epoch)
    assert await lua.usage() == stored


@pytest.mark.parametrize(("half_lives_ago", "min_half_lives"), [(3.5, "1.0"), (0.75, "0.5")])
async def test_roll_rescales_every_member_and_keeps_decayed_usage(
    lua: Harness, half_lives_ago: float, min_half_lives: str
) -> None:
    stored = {"a": 3.0e6, "b": 5.0e6, "c": 4.0e6, "idle": 0.0}
    old_epoch = await seed(lua, stored, half_lives_ago)
    order = await lua.client.zrange(KEYS.usage, 0, -1)
    decayed_before = await lua.decayed(list(stored))

    before = await server_ms(lua.client)
    reply = await lua.roll(min_half_lives)
    after = await server_ms(lua.client)

    new_epoch = await lua.epoch_ms()
    assert before <= new_epoch <= after
    exponent = (new_epoch - old_epoch) / LONG_HALF_LIFE_MS
    assert exponent == pytest.approx(half_lives_ago, abs=1e-6)
    assert float(reply) == pytest.approx(exponent, rel=1e-12)
    shrink = 2.0**-exponent
    assert await lua.usage() == pytest.approx(
        {target: score * shrink for target, score in stored.items()}, rel=1e-12
    )
    assert await lua.client.zrange(KEYS.usage, 0, -1) == order
    assert await lua.decayed(list(stored)) == pytest.approx(decayed_before, rel=1e-9)
    # The half-life is left as it was; a second roll right away finds nothing to do.
    assert await lua.client.hget(KEYS.meta, "half_life_ms") == str(LONG_HALF_LIFE_MS)
    assert await lua.roll(min_half_lives) == "0"
    assert await lua.epoch_ms() == new_epoch


async def test_roll_of_a_balancer_with_no_usage_yet_moves_the_epoch(lua: Harness) -> None:
    old_epoch = await seed(lua, {}, 2.0)

    reply = await lua.roll()

    assert float(reply) == pytest.approx(2.0, abs=1e-6)
    assert await lua.epoch_ms() > old_epoch
    assert await lua.usage() == {}


async def test_concurrent_rolls_roll_once_and_keep_decayed_usage(
    lua: Harness, redis_url: str
) -> None:
    stored = {f"t{i}": float(1000 + 37 * i) for i in range(50)}
    await seed(lua, stored, 4.0)
    decayed_before = await lua.decayed(list(stored))
    clients = [connect_redis(redis_url) for _ in range(3)]
    try:
        if lua.flush_before_each_call:
            await lua.client.script_flush()  # all three clients reload it, concurrently
        replies = await asyncio.gather(
            *(
                lua._raw["roll_epoch"](keys=[KEYS.usage, KEYS.meta], args=["1.0"], client=c)
                for c in clients
            )
        )
    finally:
        for client in clients:
            await client.aclose()

    # Whoever ran first rolled four half-lives away; the others found a fresh epoch.
    rolled = [float(reply) for reply in replies if str(reply) != "0"]
    assert len(rolled) == 1
    assert rolled[0] == pytest.approx(4.0, abs=1e-6)
    assert await lua.decayed(list(stored)) == pytest.approx(decayed_before, rel=1e-9)
    assert await lua.usage() == pytest.approx(
        {target: score / 16 for target, score in stored.items()}, rel=1e-6
    )
