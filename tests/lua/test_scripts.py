"""The balancer's Lua scripts against a real redis-server, branch by branch.

Most checks go through ``RedisStore`` (what the proxy calls); the rest call the scripts
raw where a branch has no typed entry point. Every test runs twice: with the script cache
warm, and with ``SCRIPT FLUSH`` before every script call, so each EVALSHA must take
redis-py's NOSCRIPT fallback and reload the script.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.scripts import lua_source
from tokenlb_proxy.store import Candidate, RedisStore, Selection, Settlement
from tokenlb_proxy.store.base import Algorithm
from tokenlb_proxy.store.redis import connect_redis

KEYS = balancer_keys("lua-tests")
SCRIPT_NAMES = ("select_target", "record_usage")
SELECT_KEYS = [KEYS.usage, KEYS.meta, KEYS.round_robin, KEYS.breaker, KEYS.leases]
SELECT_KEYS += [KEYS.in_flight, KEYS.latency, KEYS.budget]
RECORD_KEYS = [KEYS.usage, KEYS.meta, KEYS.totals, KEYS.events, KEYS.breaker, KEYS.leases]
RECORD_KEYS += [KEYS.in_flight, KEYS.latency, KEYS.budget]
#: A half-life so long that decay over a test is below float noise (~1e-11 relative).
NO_DECAY_MS = 10**12


def candidate(
    target_id: str,
    weight: int = 1,
    estimate: float = 0.0,
    *,
    eligible: bool = True,
    lease_ms: int = 60_000,
    tier: int = 0,
    tokens: int = 0,
    tpm: int = 0,
    rpm: int = 0,
) -> Candidate:
    return Candidate(
        target_id=target_id,
        weight=weight,
        estimate=estimate,
        eligible=eligible,
        lease_ms=lease_ms,
        tier=tier,
        tokens=tokens,
        tokens_per_minute=tpm,
        requests_per_minute=rpm,
    )


class Scripts:
    """The scripts on one client: through ``RedisStore`` as the proxy calls them, or raw."""

    def __init__(self, client: aioredis.Redis, *, flush_before_each_call: bool) -> None:
        self.client = client
        self.store = RedisStore(client)
        #: Rolls the epoch whenever any time has passed since it (roll_after = 0 half-lives).
        self.rolling_store = RedisStore(client, roll_after=0.0)
        self.flush_before_each_call = flush_before_each_call
        self._raw = {name: client.register_script(lua_source(name)) for name in SCRIPT_NAMES}

    async def _before_call(self) -> None:
        if self.flush_before_each_call:
            await self.client.script_flush()

    async def select(
        self,
        candidates: Sequence[Candidate],
        *,
        half_life_ms: int = NO_DECAY_MS,
        algorithm: Algorithm = "lowest-usage",
        store: RedisStore | None = None,
    ) -> Selection:
        await self._before_call()
        return await (store or self.store).select(KEYS, algorithm, half_life_ms, candidates)

    async def settle(
        self,
        target_id: str,
        selection: Selection,
        *,
        reserved: float,
        actual: float,
        half_life_ms: int = NO_DECAY_MS,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
        failed: bool = False,
        breaker_failure: bool = False,
        max_fails: int = 0,
        fail_timeout_ms: int = 10_000,
        retry_after_ms: int = 0,
        latency: float = -1.0,
        budget_reserved: int = -1,
        budget_used: int = 0,
    ) -> None:
        await self._before_call()
        settlement = Settlement(
            target_id=target_id,
            reserved=reserved,
            reserved_at_ms=selection.reserved_at_ms,
            actual=actual,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            failed=failed,
            backend=selection.backend,
            breaker_failure=breaker_failure,
            max_fails=max_fails,
            fail_timeout_ms=fail_timeout_ms,
            retry_after_ms=retry_after_ms,
            lease_id=selection.lease_id,
            latency=latency,
            budget_reserved=budget_reserved,
            budget_used=budget_used,
        )
        await self.store.settle(KEYS, half_life_ms, settlement)

    async def raw(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        await self._before_call()
        return await self._raw[name](keys=list(keys), args=list(args))

    async def record_usage(
        self,
        target_id: str,
        *,
        reserved: str,
        reserved_at_ms: int,
        actual: str,
        failed: str = "0",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: str = "0.0",
        event: str = "",
        breaker_failure: str = "0",
        max_fails: int = 0,
        fail_timeout_ms: int = 10_000,
        retry_after_ms: int = 0,
        lease_id: str = "",
        latency: str = "-1",
        budget_reserved: int = -1,
        budget_used: int = 0,
    ) -> str:
        """record_usage.lua called raw, with every ARGV as Redis receives it."""
        args: list[str | int] = [target_id, NO_DECAY_MS, reserved, reserved_at_ms, actual]
        args += [prompt_tokens, completion_tokens, cost, failed, "20", event, "1000"]
        args += [breaker_failure, max_fails, fail_timeout_ms, retry_after_ms, lease_id, latency]
        args += [budget_reserved, budget_used]
        keys = [*RECORD_KEYS, KEYS.budget_window(target_id)]
        reply = await self.raw("record_usage", keys, args)
        return str(reply)

    async def usage(self) -> dict[str, float]:
        """The raw (forward-decayed) scores of the usage sorted set."""
        members = await self.client.zrange(KEYS.usage, 0, -1, withscores=True)
        return dict(cast("list[tuple[str, float]]", members))

    async def epoch_ms(self) -> int | None:
        value = await self.client.hget(KEYS.meta, "epoch_ms")
        return None if value is None else int(value)


async def server_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def seed_usage(client: aioredis.Redis, usage: dict[str, float]) -> None:
    """Known targets with the given usage, epoch now (so raw score == decayed usage)."""
    await client.hset(KEYS.meta, "epoch_ms", await server_ms(client))
    await client.zadd(KEYS.usage, usage)


@pytest.fixture(params=["warm-script-cache", "script-flush-before-each-call"])
async def lua(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Scripts]:
    client = connect_redis(redis_url)
    try:
        yield Scripts(client, flush_before_each_call=request.param != "warm-script-cache")
    finally:
        await client.aclose()


# select_target.lua: lowest-usage -----------------------------------------------------


async def test_first_call_creates_epoch_and_later_calls_keep_it(lua: Scripts) -> None:
    assert await lua.epoch_ms() is None
    before = await server_ms(lua.client)
    first = await lua.select([candidate("a")])
    after = await server_ms(lua.client)

    assert before <= first.reserved_at_ms <= after
    assert await lua.epoch_ms() == first.reserved_at_ms
    await asyncio.sleep(0.003)
    second = await lua.select([candidate("a")])
    assert second.reserved_at_ms > first.reserved_at_ms
    assert await lua.epoch_ms() == first.reserved_at_ms


async def test_new_targets_start_at_zero_when_none_is_known(lua: Scripts) -> None:
    selection = await lua.select([candidate("a", 2), candidate("b", 3)])

    assert selection.index == 0
    assert selection.score == 0.0
    assert await lua.usage() == {"a": 0.0, "b": 0.0}


async def test_new_target_starts_at_average_usage_per_weight(lua: Scripts) -> None:
    # Per unit of weight: a 100, b 200 -> average 150; c (weight 3) starts at 450.
    await seed_usage(lua.client, {"a": 100.0, "b": 400.0})

    selection = await lua.select([candidate("a", 1), candidate("b", 2), candidate("c", 3)])

    assert selection.index == 0
    assert selection.score == pytest.approx(100.0)
    assert await lua.usage() == pytest.approx({"a": 100.0, "b": 400.0, "c": 450.0})


async def test_slow_start_target_is_not_flooded(lua: Scripts) -> None:
    # c joins at the average (150), so requests go to a (100) until it passes 150; had c
    # joined at 0, it would have taken all four.
    await seed_usage(lua.client, {"a": 100.0, "b": 200.0})
    targets = [candidate("a", estimate=20.0), candidate("b", estimate=20.0)]
    targets.append(candidate("c", estimate=20.0))

    chosen = [(await lua.select(targets)).index for _ in range(4)]

    assert chosen == [0, 0, 0, 2]


@pytest.mark.parametrize(
    ("usage", "weights", "expected"),
    [
        # Raw usage 300 on weight 3 is 100 per unit: lower than 150 on weight 1.
        ({"a": 300.0, "b": 150.0}, (3, 1), 0),
        # The same raw usage on equal weights: the lower raw usage wins.
        ({"a": 300.0, "b": 150.0}, (1, 1), 1),
        # 90 per unit on weight 1 beats 100 per unit on weight 3.
        ({"a": 300.0, "b": 90.0}, (3, 1), 1),
    ],
)
async def test_lowest_usage_per_unit_of_weight_wins(
    lua: Scripts, usage: dict[str, float], weights: tuple[int, int], expected: int
) -> None:
    await seed_usage(lua.client, usage)

    selection = await lua.select([candidate("a", weights[0]), candidate("b", weights[1])])

    assert selection.index == expected
    target = "ab"[expected]
    assert selection.score == pytest.approx(usage[target] / weights[expected])


async def test_ties_go_to_the_earlier_target(lua: Scripts) -> None:
    await seed_usage(lua.client, {"a": 50.0, "b": 50.0, "c": 100.0})

    assert (await lua.select([candidate("b"), candidate("a")])).index == 0
    assert (await lua.select([candidate("a"), candidate("b")])).index == 0
    # Equal per unit of weight: 50/1 and 100/2.
    assert (await lua.select([candidate("c", 2), candidate("a", 1)])).index == 0


async def test_ineligible_target_is_never_chosen_but_counts_in_the_average(
    lua: Scripts,
) -> None:
    # a is idle but ineligible. The new c starts at (0 + 200) / 2 = 100, below b's 200;
    # were a left out of the average, c would start at 200 and lose the tie to b.
    await seed_usage(lua.client, {"a": 0.0, "b": 200.0})
    targets = [candidate("a", eligible=False), candidate("b"), candidate("c")]

    selection = await lua.select(targets)

    assert selection.index == 2
    assert selection.score == pytest.approx(100.0)
    assert (await lua.usage())["c"] == pytest.approx(100.0)


async def test_ineligible_target_is_skipped_even_when_idle(lua: Scripts) -> None:
    await seed_usage(lua.client, {"a": 0.0, "b": 1000.0})

    for _ in range(3):
        selection = await lua.select([candidate("a", eligible=False), candidate("b", estimate=5)])
        assert selection.index == 1
    assert await lua.usage() == pytest.approx({"a": 0.0, "b": 1015.0})


async def test_no_eligible_target_chooses_nothing_and_reserves_nothing(lua: Scripts) -> None:
    await seed_usage(lua.client, {"a": 10.0})
    targets = [candidate("a", estimate=5, eligible=False)]
    targets.append(candidate("b", estimate=5, eligible=False))

    before = await server_ms(lua.client)
    selection = await lua.select(targets)
    after = await server_ms(lua.client)
    assert selection.index is None
    assert selection.score == 0.0
    assert before <= selection.reserved_at_ms <= after
    # b was still added at the slow-start average, but nothing was reserved.
    assert await lua.usage() == pytest.approx({"a": 10.0, "b": 10.0})

    reply = await lua.raw(
        "select_target",
        SELECT_KEYS,
        [
            "lowest-usage",
            NO_DECAY_MS,
            "20",
            2,
            "0",
            "0",
            *("a", 1, "5", "0"),
            *("b", 1, "5", "0"),
        ],
    )
    assert reply == [0, reply[1], "0", "", 0, ""]


async def test_no_candidates_chooses_nothing(lua: Scripts) -> None:
    selection = await lua.select([])

    assert selection.index is None
    assert await lua.usage() == {}
    assert await lua.epoch_ms() == selection.reserved_at_ms


async def test_zero_estimate_reserves_nothing(lua: Scripts) -> None:
    await lua.select([candidate("a", estimate=0.0)])
    await lua.select([candidate("a", estimate=0)])
    assert await lua.usage() == {"a": 0.0}

    await lua.select([candidate("a", estimate=12.5)])
    assert await lua.usage() == pytest.approx({"a": 12.5})


async def test_reservation_sends_the_next_caller_to_the_other_target(lua: Scripts) -> None:
    targets = [candidate("a", estimate=10.0), candidate("b", estimate=10.0)]

    chosen = [(await lua.select(targets)).index for _ in range(6)]

    assert chosen == [0, 1, 0, 1, 0, 1]
    assert await lua.usage() == pytest.approx({"a": 30.0, "b": 30.0})


async def test_epoch_rolls_and_rescales_every_member(lua: Scripts) -> None:
    half_life_ms = 1000
    old_epoch = await server_ms(lua.client) - 25 * half_life_ms  # past roll_after = 20
    await lua.client.hset(KEYS.meta, "epoch_ms", old_epoch)
    stored = {"a": 3.0 * 2**25, "b": 5.0 * 2**25, "c": 4.0 * 2**25}
    await lua.client.zadd(KEYS.usage, stored)

    selection = await lua.select(
        [candidate("a", estimate=0.5), candidate("b"), candidate("c")], half_life_ms=half_life_ms
    )

    shrink = 2.0 ** (-(selection.reserved_at_ms - old_epoch) / half_life_ms)
    assert shrink <= 2.0**-25
    assert await lua.epoch_ms() == selection.reserved_at_ms
    assert selection.index == 0
    assert selection.score == pytest.approx(stored["a"] * shrink, rel=1e-12)
    # The reservation is added at the new epoch's scale: exactly its estimate.
    expected = {target: score * shrink for target, score in stored.items()}
    expected["a"] += 0.5
    assert await lua.usage() == pytest.approx(expected, rel=1e-12)
    assert await lua.client.zrange(KEYS.usage, 0, -1) == ["a", "c", "b"]


async def test_epoch_stays_below_roll_after(lua: Scripts) -> None:
    half_life_ms = 1000
    old_epoch = await server_ms(lua.client) - 10 * half_life_ms
    await lua.client.hset(KEYS.meta, "epoch_ms", old_epoch)
    await lua.client.zadd(KEYS.usage, {"a": 3.0 * 2**10})

    selection = await lua.select([candidate("a")], half_life_ms=half_life_ms)

    assert await lua.epoch_ms() == old_epoch
    assert await lua.usage() == {"a": 3.0 * 2**10}
    decay = 2.0 ** (-(selection.reserved_at_ms - old_epoch) / half_life_ms)
    assert selection.score == pytest.approx(3.0 * 2**10 * decay, rel=1e-12)


async def test_usage_halves_every_half_life(lua: Scripts) -> None:
    half_life_ms = 200
    selection = await lua.select([candidate("a", estimate=100.0)], half_life_ms=half_life_ms)
    reserved_at = selection.reserved_at_ms

    for half_lives in (1, 2):
        await asyncio.sleep(half_life_ms / 1000)
        before = await server_ms(lua.client)
        usage = (await lua.store.totals(KEYS, half_life_ms, ["a"]))["a"].usage
        after = await server_ms(lua.client)
        # Exactly 100 * 2^(-elapsed / half-life) for an elapsed time within [before, after].
        lowest = 100.0 * 2.0 ** (-(after - reserved_at) / half_life_ms)
        highest = 100.0 * 2.0 ** (-(before - reserved_at) / half_life_ms)
        assert lowest * (1 - 1e-9) <= usage <= highest * (1 + 1e-9)
        assert usage == pytest.approx(100.0 / 2**half_lives, rel=0.15)


# record_usage.lua ------------------------------------------------------------------------


@pytest.mark.parametrize(("actual", "expected"), [(100.0, 100.0), (30.0, 30.0), (250.0, 250.0)])
async def test_settle_swaps_the_reservation_for_actual_usage(
    lua: Scripts, actual: float, expected: float
) -> None:
    selection = await lua.select([candidate("a", estimate=100.0)])
    assert await lua.usage() == pytest.approx({"a": 100.0})

    await lua.settle("a", selection, reserved=100.0, actual=actual)

    assert await lua.usage() == pytest.approx({"a": expected})
    assert await lua.epoch_ms() == selection.reserved_at_ms  # no roll this soon
    totals = await lua.store.totals(KEYS, NO_DECAY_MS, ["a"])
    assert totals["a"].usage == pytest.approx(expected)


async def test_settle_with_zero_actual_releases_the_reservation(lua: Scripts) -> None:
    targets = [candidate("a", estimate=100.0), candidate("b", estimate=100.0)]
    first = await lua.select(targets)
    assert first.index == 0

    await lua.settle("a", first, reserved=100.0, actual=0.0, failed=True)

    assert (await lua.usage())["a"] == pytest.approx(0.0, abs=1e-9)
    # a is idle again, so it wins the tie once more.
    assert (await lua.select(targets)).index == 0


async def test_reservation_made_before_an_epoch_roll_is_removed_exactly(lua: Scripts) -> None:
    half_life_ms = 1000
    first = await lua.select([candidate("a")], half_life_ms=half_life_ms)  # creates the epoch
    first_epoch = first.reserved_at_ms
    await lua.client.zadd(KEYS.usage, {"a": 1000.0})
    selection = await lua.select([candidate("a", estimate=100.0)], half_life_ms=half_life_ms)
    await asyncio.sleep(0.005)
    rolled = await lua.select([candidate("a")], half_life_ms=half_life_ms, store=lua.rolling_store)
    assert await lua.epoch_ms() == rolled.reserved_at_ms > selection.reserved_at_ms

    await lua.settle(
        "a", selection, reserved=100.0, actual=0.0, half_life_ms=half_life_ms, failed=True
    )

    # Only the 1000 stored before the reservation is left, rescaled by the roll: an
    # under-release would leave more, an over-release less (it is far from the 0 clamp).
    shrink = 2.0 ** (-(rolled.reserved_at_ms - first_epoch) / half_life_ms)
    assert await lua.usage() == pytest.approx({"a": 1000.0 * shrink}, rel=1e-12)


@pytest.mark.parametrize("deleted", [("meta",), ("meta", "usage")])
async def test_settle_after_state_was_deleted_adds_actual_only(
    lua: Scripts, deleted: tuple[str, ...]
) -> None:
    selection = await lua.select([candidate("a", estimate=100.0)])
    await lua.client.delete(*(getattr(KEYS, name) for name in deleted))
    left = (await lua.usage()).get("a", 0.0)

    before = await server_ms(lua.client)
    reply = await lua.record_usage(
        "a", reserved="100.0", reserved_at_ms=selection.reserved_at_ms, actual="30.0"
    )
    after = await server_ms(lua.client)

    assert await lua.usage() == pytest.approx({"a": left + 30.0})
    assert float(reply) == pytest.approx(left + 30.0)
    epoch = await lua.epoch_ms()
    assert epoch is not None
    assert before <= epoch <= after
    assert (await lua.store.totals(KEYS, NO_DECAY_MS, ["a"]))["a"].requests == 1


async def test_settle_rolls_the_epoch_too(lua: Scripts) -> None:
    # Round-robin balancers settle but never roll the epoch in select_target.lua; it must
    # still move, or 2^((now - epoch) / half_life) overflows and settling fails.
    half_life_ms = 1000
    old_epoch = await server_ms(lua.client) - 25 * half_life_ms  # past roll_after = 20
    await lua.client.hset(KEYS.meta, "epoch_ms", old_epoch)
    stored = {"a": 3.0 * 2**25, "b": 5.0 * 2**25}
    await lua.client.zadd(KEYS.usage, stored)
    selection = await lua.select([candidate("a")], algorithm="round-robin")

    await lua.settle("a", selection, reserved=0.0, actual=4.0, half_life_ms=half_life_ms)

    new_epoch = await lua.epoch_ms()
    assert new_epoch is not None
    assert new_epoch >= selection.reserved_at_ms
    shrink = 2.0 ** (-(new_epoch - old_epoch) / half_life_ms)
    expected = {"a": stored["a"] * shrink + 4.0, "b": stored["b"] * shrink}
    assert await lua.usage() == pytest.approx(expected, rel=1e-12)


async def test_settle_works_after_a_thousand_half_lives(lua: Scripts) -> None:
    half_life_ms = 1000
    old_epoch = await server_ms(lua.client) - 1100 * half_life_ms  # 2^1100 overflows
    await lua.client.hset(KEYS.meta, "epoch_ms", old_epoch)
    await lua.client.zadd(KEYS.usage, {"a": 2.0**1000})
    selection = await lua.select([candidate("a")], algorithm="round-robin")

    await lua.settle(
        "a", selection, reserved=0.0, actual=10.0, half_life_ms=half_life_ms, completion_tokens=10
    )

    assert await lua.usage() == pytest.approx({"a": 10.0})
    totals = (await lua.store.totals(KEYS, half_life_ms, ["a"]))["a"]
    assert (totals.requests, totals.completion_tokens) == (1, 10)
    assert totals.usage == pytest.approx(10.0, rel=0.05)


async def test_over_release_is_clamped_to_zero(lua: Scripts) -> None:
    selection = await lua.select([candidate("a", estimate=10.0)])

    reply = await lua.record_usage(
        "a", reserved="10.5", reserved_at_ms=selection.reserved_at_ms, actual="0.0", failed="1"
    )

    assert reply == "0"
    assert await lua.usage() == {"a": 0.0}


async def test_settle_returns_decayed_usage_after_settling(lua: Scripts) -> None:
    selection = await lua.select([candidate("a", estimate=40.0)])

    reply = await lua.record_usage(
        "a", reserved="40.0", reserved_at_ms=selection.reserved_at_ms, actual="64.5"
    )

    assert float(reply) == pytest.approx(64.5)


async def test_settle_increments_the_totals_hash(lua: Scripts) -> None:
    ok = await lua.select([candidate("a", estimate=33.0)])
    await lua.settle(
        "a", ok, reserved=33.0, actual=33.0, prompt_tokens=11, completion_tokens=22, cost=0.5
    )
    # No errors field until a request fails.
    assert await lua.client.hgetall(KEYS.totals) == {
        "a:requests": "1",
        "a:prompt_tokens": "11",
        "a:completion_tokens": "22",
        "a:cost": "0.5",
    }

    failed = await lua.select([candidate("a", estimate=8.0)])
    await lua.settle("a", failed, reserved=8.0, actual=0.0, prompt_tokens=3, failed=True)
    other = await lua.select([candidate("b", estimate=1.0)])
    # Per-token prices are tiny: repr() gives exponent notation, which must still add up.
    await lua.settle("b", other, reserved=1.0, actual=1.0, prompt_tokens=1, cost=2.5e-06)

    totals = await lua.store.totals(KEYS, NO_DECAY_MS, ["a", "b"])
    a, b = totals["a"], totals["b"]
    assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens) == (2, 1, 14, 22)
    assert a.cost == pytest.approx(0.5)
    assert a.usage == pytest.approx(33.0)
    assert (b.requests, b.errors, b.prompt_tokens, b.completion_tokens) == (1, 0, 1, 0)
    assert b.cost == pytest.approx(2.5e-06)


# select_target.lua: round-robin ------------------------------------------------------


async def round_robin(lua: Scripts, targets: Sequence[Candidate], calls: int) -> list[int | None]:
    return [(await lua.select(targets, algorithm="round-robin")).index for _ in range(calls)]


async def test_round_robin_is_nginx_smooth_weighted(lua: Scripts) -> None:
    targets = [candidate("a", 5), candidate("b", 1), candidate("c", 1)]

    # nginx's documented sequence for weights 5, 1, 1: a a b a c a a, then again.
    assert await round_robin(lua, targets, 14) == [0, 0, 1, 0, 2, 0, 0] * 2


async def test_round_robin_gives_exact_shares(lua: Scripts) -> None:
    targets = [candidate("a", 3), candidate("b", 2), candidate("c", 1)]

    chosen = await round_robin(lua, targets, 600)

    assert Counter(chosen) == {0: 300, 1: 200, 2: 100}
    # Smooth: every window of one full cycle holds each target its weight's share.
    assert all(Counter(chosen[i : i + 6]) == {0: 3, 1: 2, 2: 1} for i in range(0, 600, 6))


async def test_round_robin_skips_ineligible_targets(lua: Scripts) -> None:
    targets = [candidate("a"), candidate("b", eligible=False), candidate("c")]

    assert await round_robin(lua, targets, 6) == [0, 2, 0, 2, 0, 2]
    assert await lua.client.hget(KEYS.round_robin, "b") is None


async def test_round_robin_with_nothing_eligible(lua: Scripts) -> None:
    before = await server_ms(lua.client)
    nothing = await lua.select([candidate("a", eligible=False)], algorithm="round-robin")
    empty = await lua.select([], algorithm="round-robin")
    after = await server_ms(lua.client)

    assert nothing.index is None
    assert empty.index is None
    assert before <= nothing.reserved_at_ms <= empty.reserved_at_ms <= after
    assert nothing.score == 0.0
    assert await lua.client.exists(KEYS.round_robin) == 0


# Circuit breaker: record_usage.lua opens it, select_target.lua honours it ----------------


async def fail(
    lua: Scripts,
    target_id: str,
    *,
    counts: bool = True,
    max_fails: int = 3,
    fail_timeout_ms: int = 10_000,
    retry_after_ms: int = 0,
) -> None:
    """One failed attempt on ``target_id``, settled as the proxy settles it."""
    selection = await lua.select([candidate(target_id)], algorithm="round-robin")
    await lua.settle(
        target_id,
        selection,
        reserved=0.0,
        actual=0.0,
        failed=True,
        breaker_failure=counts,
        max_fails=max_fails,
        fail_timeout_ms=fail_timeout_ms,
        retry_after_ms=retry_after_ms,
    )


async def out_until(lua: Scripts, target_id: str) -> int | None:
    value = await lua.client.hget(KEYS.breaker, f"{target_id}:until")
    return None if value is None else int(value)


@pytest.mark.parametrize("algorithm", ["lowest-usage", "round-robin"])
async def test_breaker_opens_after_max_fails_and_is_skipped(
    lua: Scripts, algorithm: Algorithm
) -> None:
    targets = [candidate("a"), candidate("b")]
    for _ in range(2):
        await fail(lua, "a")
    assert await out_until(lua, "a") is None
    assert await lua.client.hget(KEYS.breaker, "a:fails") == "2"

    before = await server_ms(lua.client)
    await fail(lua, "a")  # the third failure within fail_timeout opens it
    after = await server_ms(lua.client)

    until = await out_until(lua, "a")
    assert until is not None
    assert before + 10_000 <= until <= after + 10_000
    # The count starts again while it is out.
    assert await lua.client.hget(KEYS.breaker, "a:fails") is None
    chosen = [(await lua.select(targets, algorithm=algorithm)).index for _ in range(4)]
    assert chosen == [1, 1, 1, 1]


async def test_breaker_counts_failures_in_total_not_consecutively(lua: Scripts) -> None:
    await fail(lua, "a")
    ok = await lua.select([candidate("a")], algorithm="round-robin")
    await lua.settle("a", ok, reserved=0.0, actual=10.0, max_fails=3)
    await fail(lua, "a")
    assert await out_until(lua, "a") is None
    await fail(lua, "a")
    assert await out_until(lua, "a") is not None


async def test_failures_outside_the_window_do_not_add_up(lua: Scripts) -> None:
    for _ in range(2):
        await fail(lua, "a", fail_timeout_ms=150)
    await asyncio.sleep(0.2)  # the window of the first failure has passed
    await fail(lua, "a", fail_timeout_ms=150)
    assert await out_until(lua, "a") is None
    assert await lua.client.hget(KEYS.breaker, "a:fails") == "1"


async def test_breaker_closes_after_fail_timeout(lua: Scripts) -> None:
    for _ in range(2):
        await fail(lua, "a", max_fails=2, fail_timeout_ms=200)
    targets = [candidate("a"), candidate("b", eligible=False)]
    closed = await lua.select(targets, algorithm="round-robin")
    assert (closed.index, closed.blocked) == (None, "broken")

    await asyncio.sleep(0.25)
    reopened = await lua.select(targets, algorithm="round-robin")
    assert (reopened.index, reopened.blocked, reopened.retry_at_ms) == (0, "", 0)


@pytest.mark.parametrize(("counts", "max_fails"), [(False, 1), (True, 0)])
async def test_uncounted_failures_and_max_fails_zero_never_open(
    lua: Scripts, counts: bool, max_fails: int
) -> None:
    for _ in range(5):
        await fail(lua, "a", counts=counts, max_fails=max_fails)
    assert await lua.client.exists(KEYS.breaker) == 0
    assert (await lua.select([candidate("a")])).index == 0


async def test_retry_after_takes_a_target_out_whatever_max_fails_says(lua: Scripts) -> None:
    before = await server_ms(lua.client)
    await fail(lua, "a", counts=False, max_fails=0, retry_after_ms=30_000)
    after = await server_ms(lua.client)
    until = await out_until(lua, "a")
    assert until is not None
    assert before + 30_000 <= until <= after + 30_000
    # A shorter Retry-After later does not shorten it; a longer one extends it.
    await fail(lua, "a", counts=False, max_fails=0, retry_after_ms=1_000)
    assert await out_until(lua, "a") == until
    await fail(lua, "a", counts=False, max_fails=0, retry_after_ms=60_000)
    extended = await out_until(lua, "a")
    assert extended is not None
    assert extended >= until + 29_000
    assert 30_000 < await lua.client.pttl(KEYS.breaker) <= 60_000


async def test_every_eligible_target_out_reports_the_soonest_return(lua: Scripts) -> None:
    await fail(lua, "a", retry_after_ms=50_000)
    await fail(lua, "b", retry_after_ms=20_000)
    await fail(lua, "c", retry_after_ms=5_000)  # soonest, but c is not eligible
    b_until = await out_until(lua, "b")
    targets = [candidate("a"), candidate("b"), candidate("c", eligible=False)]

    for algorithm in ("lowest-usage", "round-robin"):
        selection = await lua.select(targets, algorithm=algorithm)
        assert (selection.index, selection.blocked) == (None, "broken")
        assert selection.retry_at_ms == b_until

    # Nothing eligible at all is not "broken": there is nothing to wait for.
    nothing = await lua.select([candidate("a", eligible=False)])
    assert (nothing.index, nothing.blocked, nothing.retry_at_ms) == (None, "", 0)


async def test_breaker_state_expires(lua: Scripts) -> None:
    await fail(lua, "a", fail_timeout_ms=5_000)
    assert 0 < await lua.client.pttl(KEYS.breaker) <= 5_000


async def test_record_usage_breaker_argv_raw(lua: Scripts) -> None:
    selection = await lua.select([candidate("a")])
    for _ in range(2):
        await lua.record_usage(
            "a",
            reserved="0",
            reserved_at_ms=selection.reserved_at_ms,
            actual="0",
            failed="1",
            breaker_failure="1",
            max_fails=2,
        )
    assert await out_until(lua, "a") is not None
    # "0" is a string, not a false Lua value: it must not count.
    await lua.record_usage(
        "b",
        reserved="0",
        reserved_at_ms=selection.reserved_at_ms,
        actual="0",
        failed="1",
        breaker_failure="0",
        max_fails=1,
    )
    assert await out_until(lua, "b") is None


# select_target.lua: least-connections --------------------------------------------------


async def in_flight(lua: Scripts) -> dict[str, int]:
    counts = await lua.client.hgetall(KEYS.in_flight)
    return {target: int(count) for target, count in counts.items()}


async def test_least_connections_keeps_in_flight_per_weight_even(lua: Scripts) -> None:
    targets = [candidate("a", 2), candidate("b", 1)]

    held = [await lua.select(targets, algorithm="least-connections") for _ in range(6)]

    # (in_flight + 1) / weight: an idle fleet starts on the heavier target, and the
    # counts climb in step with the weights.
    assert [s.index for s in held[:2]] == [0, 0]
    assert await in_flight(lua) == {"a": 4, "b": 2}
    assert [s.score for s in held[:3]] == [0.0, 1.0, 0.0]
    assert len({s.lease_id for s in held}) == 6
    assert await lua.client.zcard(KEYS.leases) == 6


async def test_settle_returns_the_lease_once(lua: Scripts) -> None:
    targets = [candidate("a"), candidate("b")]
    first = await lua.select(targets, algorithm="least-connections")
    second = await lua.select(targets, algorithm="least-connections")
    assert {first.index, second.index} == {0, 1}
    assert await in_flight(lua) == {"a": 1, "b": 1}

    await lua.settle("ab"[first.index or 0], first, reserved=0.0, actual=5.0)
    await lua.settle("ab"[first.index or 0], first, reserved=0.0, actual=5.0)  # a retry
    assert await in_flight(lua) == {"ab"[second.index or 0]: 1}
    # The freed target is the least loaded now.
    assert (await lua.select(targets, algorithm="least-connections")).index == first.index


async def test_idle_ties_rotate_instead_of_piling_on_the_first(lua: Scripts) -> None:
    targets = [candidate("a"), candidate("b"), candidate("c")]
    chosen = []
    for _ in range(6):
        selection = await lua.select(targets, algorithm="least-connections")
        chosen.append(selection.index)
        await lua.settle("abc"[selection.index or 0], selection, reserved=0.0, actual=1.0)
    assert chosen == [0, 1, 2, 0, 1, 2]
    assert await in_flight(lua) == {}


async def test_expired_leases_stop_counting(lua: Scripts) -> None:
    short = [candidate("a", lease_ms=100), candidate("b", lease_ms=100)]
    orphan = await lua.select(short, algorithm="least-connections")  # its replica dies
    assert orphan.index == 0
    assert (await lua.select(short, algorithm="least-connections")).index == 1
    await asyncio.sleep(0.15)

    # The next selection sweeps both expired leases before counting.
    only_a = [candidate("a"), candidate("b", eligible=False)]
    again = await lua.select(only_a, algorithm="least-connections")
    assert (again.index, again.score) == (0, 0.0)
    assert await in_flight(lua) == {"a": 1}
    assert await lua.client.zcard(KEYS.leases) == 1
    # A late settle of the swept lease takes nothing away from the live one.
    await lua.settle("a", orphan, reserved=0.0, actual=1.0)
    assert await in_flight(lua) == {"a": 1}


async def test_least_connections_skips_broken_and_ineligible_targets(lua: Scripts) -> None:
    await fail(lua, "a", max_fails=1)
    targets = [candidate("a"), candidate("b", eligible=False), candidate("c")]
    chosen = [(await lua.select(targets, algorithm="least-connections")).index for _ in range(3)]
    assert chosen == [2, 2, 2]

    nothing = await lua.select(targets[:2], algorithm="least-connections")
    assert (nothing.index, nothing.blocked, nothing.lease_id) == (None, "broken", "")
    assert await in_flight(lua) == {"c": 3}


async def test_concurrent_least_connections_selects_are_atomic(
    lua: Scripts, redis_url: str
) -> None:
    clients = [connect_redis(redis_url, timeout_s=10.0) for _ in range(4)]
    try:
        stores = [RedisStore(client) for client in clients]
        targets = [candidate("a", 3), candidate("b", 1)]
        if lua.flush_before_each_call:
            await lua.client.script_flush()
        selections = await asyncio.gather(
            *(
                stores[i % 4].select(KEYS, "least-connections", NO_DECAY_MS, targets)
                for i in range(200)
            )
        )
        assert Counter(s.index for s in selections) == {0: 150, 1: 50}
        assert await in_flight(lua) == {"a": 150, "b": 50}
    finally:
        for client in clients:
            await client.aclose()


# select_target.lua: consistent-hashing, priority and tiers ------------------------------


async def test_priority_rotates_within_the_best_group(lua: Scripts) -> None:
    group = [candidate("a", 70), candidate("b", 70), candidate("c", 25, tier=1)]
    chosen = [(await lua.select(group, algorithm="priority")).index for _ in range(6)]
    assert chosen == [0, 1, 0, 1, 0, 1]
    # b tried: a alone; a and b tried: the lower group.
    tried_b = [group[0], candidate("b", 70, eligible=False), group[2]]
    assert (await lua.select(tried_b, algorithm="priority")).index == 0
    tried_ab = [candidate("a", 70, eligible=False), tried_b[1], group[2]]
    assert (await lua.select(tried_ab, algorithm="priority")).index == 2


async def test_consistent_hashing_takes_the_first_available_in_ring_order(lua: Scripts) -> None:
    ring = [candidate("a", tier=2), candidate("b", tier=0), candidate("c", tier=1)]
    chosen = [(await lua.select(ring, algorithm="consistent-hashing")).index for _ in range(3)]
    assert chosen == [1, 1, 1]
    # No state: nothing written for it.
    assert await lua.client.exists(KEYS.round_robin, KEYS.usage, KEYS.in_flight) == 0

    # b tried (ineligible) -> the next on the ring; c out of rotation -> the one after.
    tried = [candidate("a", tier=2), candidate("b", tier=0, eligible=False), ring[2]]
    assert (await lua.select(tried, algorithm="consistent-hashing")).index == 2
    await fail(lua, "c", max_fails=1)
    assert (await lua.select(tried, algorithm="consistent-hashing")).index == 0
    await fail(lua, "a", max_fails=1)
    nothing = await lua.select(tried, algorithm="consistent-hashing")
    assert (nothing.index, nothing.blocked) == (None, "broken")


@pytest.mark.parametrize(
    "algorithm", ["lowest-usage", "round-robin", "least-connections", "lowest-latency", "priority"]
)
async def test_only_the_lowest_available_tier_competes(lua: Scripts, algorithm: Algorithm) -> None:
    await seed_usage(lua.client, {"a": 0.0, "b": 500.0, "c": 900.0})
    # a is the idlest by far, but it is in tier 1: b and c (tier 0) share the requests.
    targets = [candidate("a", tier=1), candidate("b", tier=0), candidate("c", tier=0)]
    chosen = {(await lua.select(targets, algorithm=algorithm)).index for _ in range(4)}
    assert chosen <= {1, 2}
    await fail(lua, "b", max_fails=1)
    await fail(lua, "c", max_fails=1)
    # Tier 0 out of rotation: tier 1 takes over.
    assert (await lua.select(targets, algorithm=algorithm)).index == 0


# lowest-latency: record_usage.lua averages, select_target.lua prefers and explores ------


async def seed_latency(lua: Scripts, averages: dict[str, float]) -> None:
    """Targets with one fresh sample each (so none is due for exploration)."""
    now = await server_ms(lua.client)
    for target_id, average in averages.items():
        await lua.client.hset(
            KEYS.latency,
            mapping={f"{target_id}:avg": average, f"{target_id}:n": 1, f"{target_id}:at": now},
        )


async def latency_of(lua: Scripts, target_id: str) -> tuple[float, float]:
    average, weight = await lua.client.hmget(KEYS.latency, [f"{target_id}:avg", f"{target_id}:n"])
    return float(average), float(weight)


async def test_latency_is_a_time_decayed_mean(lua: Scripts) -> None:
    half_life_ms = 1000
    selection = await lua.select([candidate("a")], algorithm="round-robin")
    await lua.settle("a", selection, reserved=0, actual=1, latency=40.0, half_life_ms=half_life_ms)
    assert await latency_of(lua, "a") == pytest.approx((40.0, 1.0))
    await lua.settle("a", selection, reserved=0, actual=1, latency=20.0, half_life_ms=half_life_ms)
    assert await latency_of(lua, "a") == pytest.approx((30.0, 2.0), rel=0.01)

    # One half-life later the two old samples weigh 1 together; a new one weighs 1.
    at = await lua.client.hget(KEYS.latency, "a:at")
    await lua.client.hset(KEYS.latency, "a:at", int(at) - half_life_ms)
    await lua.settle("a", selection, reserved=0, actual=1, latency=90.0, half_life_ms=half_life_ms)
    assert await latency_of(lua, "a") == pytest.approx((60.0, 2.0), rel=0.01)

    # A negative sample is none.
    await lua.settle("a", selection, reserved=0, actual=1, latency=-1.0, half_life_ms=half_life_ms)
    assert await latency_of(lua, "a") == pytest.approx((60.0, 2.0), rel=0.01)


async def test_lowest_average_latency_wins_ties_to_the_earlier(lua: Scripts) -> None:
    await seed_latency(lua, {"a": 30.0, "b": 10.0, "c": 10.0})
    targets = [candidate("a"), candidate("b"), candidate("c")]
    selections = [await lua.select(targets, algorithm="lowest-latency") for _ in range(3)]
    assert [s.index for s in selections] == [1, 1, 1]
    assert selections[0].score == pytest.approx(10.0)
    # Out of rotation, the fastest is skipped for the next fastest.
    await fail(lua, "b", max_fails=1)
    assert (await lua.select(targets, algorithm="lowest-latency")).index == 2


async def test_a_new_target_is_explored_once_then_waits_for_its_sample(lua: Scripts) -> None:
    await seed_latency(lua, {"a": 10.0, "b": 30.0})
    targets = [candidate("new"), candidate("a"), candidate("b")]

    probe = await lua.select(targets, algorithm="lowest-latency")
    assert probe.index == 0  # never measured: one replica tries it once
    assert probe.score == 0.0
    assert await lua.client.hget(KEYS.latency, "new:probe") == str(probe.reserved_at_ms)
    # Until its sample arrives it takes nothing more, first in the list as it is.
    meanwhile = [await lua.select(targets, algorithm="lowest-latency") for _ in range(3)]
    assert [s.index for s in meanwhile] == [1, 1, 1]
    await seed_latency(lua, {"a": 10.0, "b": 30.0, "new": 15.0})
    await seed_latency(lua, {"a": 18.0})
    assert (await lua.select(targets, algorithm="lowest-latency")).index == 0


async def test_a_stale_target_is_explored_once_per_half_life(lua: Scripts) -> None:
    half_life_ms = 300
    await seed_latency(lua, {"fast": 5.0, "slow": 50.0})
    targets = [candidate("fast"), candidate("slow")]
    fresh = await lua.select(targets, algorithm="lowest-latency", half_life_ms=half_life_ms)
    assert fresh.index == 0

    await asyncio.sleep(half_life_ms / 1000)
    # Both are stale now: the first stale one (fast) is explored first, then slow, once.
    chosen = [
        (await lua.select(targets, algorithm="lowest-latency", half_life_ms=half_life_ms)).index
        for _ in range(4)
    ]
    assert chosen == [0, 1, 0, 0]
    # Out of rotation targets are not explored.
    await asyncio.sleep(half_life_ms / 1000)
    await fail(lua, "fast", max_fails=1)
    await fail(lua, "slow", max_fails=1)
    nothing = await lua.select(targets, algorithm="lowest-latency", half_life_ms=half_life_ms)
    assert (nothing.index, nothing.blocked) == (None, "broken")


# Budgets (limits extension): select_target.lua checks and reserves, record_usage.lua ----


async def window(lua: Scripts, target_id: str) -> tuple[list[tuple[str, float]], int]:
    members = await lua.client.zrange(KEYS.budget_window(target_id), 0, -1, withscores=True)
    tokens = await lua.client.hget(KEYS.budget, target_id)
    return [(m, score) for m, score in members], int(tokens or 0)


async def age_window(lua: Scripts, target_id: str, ms: int) -> None:
    """Move every reservation of ``target_id`` ``ms`` into the past."""
    key = KEYS.budget_window(target_id)
    members = await lua.client.zrange(key, 0, -1, withscores=True)
    await lua.client.zadd(key, {member: score - ms for member, score in members})


async def test_tokens_per_minute_holds_and_tells_when_it_frees(lua: Scripts) -> None:
    a = [candidate("a", tokens=40, tpm=100)]
    first = await lua.select(a, algorithm="round-robin")
    second = await lua.select(a, algorithm="round-robin")
    assert (first.index, second.index) == (0, 0)
    assert first.lease_id
    assert first.lease_id != second.lease_id
    members, tokens = await window(lua, "a")
    assert tokens == 80
    assert [m for m, _ in members] == [f"{first.lease_id}|40", f"{second.lease_id}|40"]
    assert members[0][1] == first.reserved_at_ms

    third = await lua.select(a, algorithm="round-robin")  # 80 + 40 > 100
    assert (third.index, third.blocked) == (None, "tokens")
    assert third.retry_at_ms == first.reserved_at_ms + 60_000  # one must leave: 40 + 40 fits
    assert third.lease_id == ""

    # The first used only 10 of its 40: 10 + 40 + 40 fits now.
    await lua.settle("a", first, reserved=0, actual=0, budget_reserved=40, budget_used=10)
    assert (await window(lua, "a"))[1] == 50
    assert (await lua.select(a, algorithm="round-robin")).index == 0
    assert (await window(lua, "a"))[1] == 90


async def test_requests_per_minute_holds_and_tells_when_it_frees(lua: Scripts) -> None:
    a = [candidate("a", tokens=1, rpm=2)]
    held = [await lua.select(a, algorithm="lowest-usage") for _ in range(2)]
    # A failed attempt used no tokens but was a request: it still counts.
    await lua.settle("a", held[0], reserved=0, actual=0, failed=True, budget_reserved=1)
    assert (await window(lua, "a"))[1] == 1
    blocked = await lua.select(a, algorithm="lowest-usage")
    assert (blocked.index, blocked.blocked) == (None, "requests")
    assert blocked.retry_at_ms == held[0].reserved_at_ms + 60_000


async def test_reservations_leave_the_window_after_a_minute(lua: Scripts) -> None:
    a = [candidate("a", tokens=60, tpm=100)]
    assert (await lua.select(a, algorithm="round-robin")).index == 0
    assert (await lua.select(a, algorithm="round-robin")).index is None
    await age_window(lua, "a", 60_000)
    assert (await lua.select(a, algorithm="round-robin")).index == 0  # the old one swept
    members, tokens = await window(lua, "a")
    assert (len(members), tokens) == (1, 60)
    assert 0 < await lua.client.pttl(KEYS.budget_window("a")) <= 120_000
    assert 0 < await lua.client.pttl(KEYS.budget) <= 120_000
    # A settle of a reservation that already left the window changes nothing.
    await age_window(lua, "a", 60_000)
    gone = await lua.select([candidate("a", tokens=60, tpm=100)], algorithm="round-robin")
    await lua.settle("a", gone, reserved=0, actual=0, budget_reserved=60, budget_used=99)
    assert (await window(lua, "a"))[1] == 99


async def test_a_request_larger_than_the_budget_runs_alone(lua: Scripts) -> None:
    big = [candidate("a", tokens=500, tpm=100)]
    assert (await lua.select(big, algorithm="round-robin")).index == 0
    assert (await lua.select(big, algorithm="round-robin")).blocked == "tokens"


@pytest.mark.parametrize("algorithm", ["lowest-usage", "round-robin", "least-connections"])
async def test_over_budget_targets_are_skipped(lua: Scripts, algorithm: Algorithm) -> None:
    targets = [candidate("a", tokens=50, tpm=100), candidate("b", tokens=50)]
    chosen = [(await lua.select(targets, algorithm=algorithm)).index for _ in range(8)]
    assert chosen.count(0) == 2  # then a is full for the minute
    assert chosen[-4:] == [1, 1, 1, 1]
    assert (await window(lua, "a"))[1] == 100
    assert await lua.client.exists(KEYS.budget_window("b")) == 0


async def test_priority_falls_to_the_lower_group_when_the_top_is_over_budget(
    lua: Scripts,
) -> None:
    targets = [candidate("top", 70, tokens=10, rpm=1), candidate("low", 25, tokens=10, tier=1)]
    chosen = [(await lua.select(targets, algorithm="priority")).index for _ in range(3)]
    assert chosen == [0, 1, 1]


async def test_over_budget_and_broken_together_report_the_budget(lua: Scripts) -> None:
    await fail(lua, "a", max_fails=1, fail_timeout_ms=90_000)
    targets = [candidate("a", tokens=10, rpm=1), candidate("b", tokens=10, rpm=1)]
    first = await lua.select(targets, algorithm="round-robin")
    assert first.index == 1
    nothing = await lua.select(targets, algorithm="round-robin")
    # b frees up in 60 s, before a is back in 90 s: a 429 the client can wait out.
    assert (nothing.index, nothing.blocked) == (None, "requests")
    assert nothing.retry_at_ms == first.reserved_at_ms + 60_000


async def test_select_argv_layout_with_every_optional_field(lua: Scripts) -> None:
    """Raw call: tier, lease_ms and the budget triple all present, as Redis receives them."""
    keys = [*SELECT_KEYS, KEYS.budget_window("a"), KEYS.budget_window("b")]
    args = ["least-connections", NO_DECAY_MS, "20", 2, "1", "1"]
    args += ["a", 1, "0.0", "1", 1, 60_000, 10, 0, 0]  # a: tier 1, no limits
    args += ["b", 1, "0.0", "1", 0, 60_000, 10, 0, 1]  # b: tier 0, 1 request a minute
    first = await lua.raw("select_target", keys, args)
    assert [first[0], first[3]] == [2, ""]
    assert await lua.client.zcard(KEYS.budget_window("b")) == 1
    assert await lua.client.zscore(KEYS.leases, f"b|{first[5]}") == first[1] + 60_000
    second = await lua.raw("select_target", keys, args)
    assert second[0] == 1  # b is over its budget: the lower tier serves


async def test_concurrent_reservations_never_overrun_a_budget(lua: Scripts, redis_url: str) -> None:
    clients = [connect_redis(redis_url, timeout_s=10.0) for _ in range(4)]
    try:
        stores = [RedisStore(client) for client in clients]
        targets = [candidate("a", tokens=10, tpm=1000), candidate("b", tokens=10, tpm=500)]
        if lua.flush_before_each_call:
            await lua.client.script_flush()
        selections = await asyncio.gather(
            *(stores[i % 4].select(KEYS, "round-robin", NO_DECAY_MS, targets) for i in range(200))
        )
        assert Counter(s.index for s in selections) == {0: 100, 1: 50, None: 50}
        assert {s.blocked for s in selections if s.index is None} == {"tokens"}
        assert [(await window(lua, t))[1] for t in ("a", "b")] == [1000, 500]
    finally:
        for client in clients:
            await client.aclose()


# Script cache and concurrency ------------------------------------------------------------


async def test_scripts_reload_after_script_flush(lua: Scripts) -> None:
    shas = [lua.client.register_script(lua_source(name)).sha for name in SCRIPT_NAMES]
    await lua.client.script_flush()
    assert await lua.client.script_exists(*shas) == [False, False]

    selection = await lua.store.select(KEYS, "lowest-usage", NO_DECAY_MS, [candidate("a", 1, 4)])
    await lua.store.select(KEYS, "round-robin", NO_DECAY_MS, [candidate("a")])
    settlement = Settlement("a", 4.0, selection.reserved_at_ms, 9.0, 0, 0, 0.0, failed=False)
    await lua.store.settle(KEYS, NO_DECAY_MS, settlement)

    assert await lua.client.script_exists(*shas) == [True, True]
    assert await lua.usage() == pytest.approx({"a": 9.0})


async def test_concurrent_selects_are_atomic(lua: Scripts, redis_url: str) -> None:
    # 200 requests open ~200 connections at once: allow for a loaded CI machine.
    clients = [connect_redis(redis_url, timeout_s=10.0) for _ in range(4)]
    try:
        stores = [RedisStore(client) for client in clients]
        targets = [candidate("a", estimate=10.0), candidate("b", estimate=10.0)]
        if lua.flush_before_each_call:
            await lua.client.script_flush()  # all four clients reload it, concurrently

        selections = await asyncio.gather(
            *(
                stores[i % len(stores)].select(KEYS, "lowest-usage", NO_DECAY_MS, targets)
                for i in range(200)
            )
        )

        chosen = Counter(selection.index for selection in selections)
        assert chosen[0] + chosen[1] == 200
        assert abs(chosen[0] - chosen[1]) <= 1
        usage = await lua.usage()
        assert usage == pytest.approx({"a": 10.0 * chosen[0], "b": 10.0 * chosen[1]})
        assert sum(usage.values()) == pytest.approx(2000.0)
    finally:
        for client in clients:
            await client.aclose()
