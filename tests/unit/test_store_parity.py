"""LocalStore and RedisStore balance alike; ResilientStore falls back and comes back.

The same scenarios run against both stores through a harness that also moves time: the
local store reads an injected clock, and Redis (whose scripts read the server's TIME) is
moved forward by shifting its decay epoch back, which ages every stored score alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support import ManagedProcess, free_port, start_redis
from tests.unit.test_events_rollups import usage_event
from tokenlb_proxy.events import EVENT_FIELD, decode_event
from tokenlb_proxy.keys import BALANCERS_KEY, BalancerKeys, balancer_keys
from tokenlb_proxy.store import (
    Candidate,
    LocalStore,
    RedisStore,
    ResilientStore,
    Selection,
    Settlement,
    TargetTotals,
    UsageStore,
)
from tokenlb_proxy.store.base import Algorithm
from tokenlb_proxy.store.redis import connect_redis

KEYS = balancer_keys("parity")
#: Long enough that Redis's real clock moving a few ms during a test is negligible (1e-4).
HALF_LIFE_MS = 60_000
RESILIENT_LOGGER = "tokenlb_proxy.store.resilient"


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
        target_id,
        weight,
        estimate,
        eligible,
        lease_ms=lease_ms,
        tier=tier,
        tokens=tokens,
        tokens_per_minute=tpm,
        requests_per_minute=rpm,
    )


class StoreHarness:
    """A store plus a clock the test moves forward; times in Selections are virtual."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store
        #: How far the test has moved the store's clock past its real one, milliseconds.
        self.offset_ms = 0

    async def advance(self, ms: int) -> None:
        raise NotImplementedError

    async def select(
        self, candidates: Sequence[Candidate], algorithm: Algorithm = "lowest-usage"
    ) -> Selection:
        selection = await self.store.select(KEYS, algorithm, HALF_LIFE_MS, candidates)
        return msgspec.structs.replace(
            selection,
            reserved_at_ms=selection.reserved_at_ms + self.offset_ms,
            retry_at_ms=selection.retry_at_ms + self.offset_ms if selection.retry_at_ms else 0,
        )

    async def settle(
        self,
        target: Candidate,
        selection: Selection,
        actual: float,
        *,
        reserved: float | None = None,
        failed: bool = False,
        cost: float = 0.0,
        breaker_failure: bool = False,
        max_fails: int = 0,
        fail_timeout_ms: int = 10_000,
        retry_after_ms: int = 0,
        latency: float = -1.0,
        budget_used: int | None = None,
    ) -> None:
        budgeted = target.tokens_per_minute or target.requests_per_minute
        settlement = Settlement(
            target_id=target.target_id,
            reserved=target.estimate if reserved is None else reserved,
            reserved_at_ms=selection.reserved_at_ms - self.offset_ms,
            actual=actual,
            prompt_tokens=int(actual) // 4,
            completion_tokens=int(actual) - int(actual) // 4,
            cost=cost,
            failed=failed,
            backend=selection.backend,
            breaker_failure=breaker_failure,
            max_fails=max_fails,
            fail_timeout_ms=fail_timeout_ms,
            retry_after_ms=retry_after_ms,
            lease_id=selection.lease_id,
            latency=latency,
            budget_reserved=target.tokens if budgeted else -1,
            budget_used=int(actual) if budget_used is None else budget_used,
        )
        await self.store.settle(KEYS, HALF_LIFE_MS, settlement)

    async def totals(self, target_ids: Sequence[str]) -> dict[str, TargetTotals]:
        return await self.store.totals(KEYS, HALF_LIFE_MS, target_ids)

    async def usage(self, target_ids: Sequence[str]) -> list[float]:
        totals = await self.totals(target_ids)
        return [totals[target_id].usage for target_id in target_ids]


class LocalHarness(StoreHarness):
    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000
        super().__init__(LocalStore(clock_ms=lambda: self.now_ms))

    async def advance(self, ms: int) -> None:
        self.now_ms += ms


class RedisHarness(StoreHarness):
    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(RedisStore(client))
        self.client = client

    async def advance(self, ms: int) -> None:
        # (now - epoch) grows by ms; reservation times are shifted with it on settle.
        if await self.client.hexists(KEYS.meta, "epoch_ms"):
            await self.client.hincrby(KEYS.meta, "epoch_ms", -ms)
        # Every absolute server time the scripts stored moves back by as much.
        for field in await self.client.hkeys(KEYS.breaker):
            if field.endswith((":until", ":since")):
                await self.client.hincrby(KEYS.breaker, field, -ms)
        for field in await self.client.hkeys(KEYS.latency):
            if field.endswith((":at", ":probe")):
                await self.client.hincrby(KEYS.latency, field, -ms)
        for key in await self.client.keys(f"{KEYS.budget_prefix}*"):
            entries = await self.client.zrange(key, 0, -1, withscores=True)
            await self.client.zadd(key, {entry: at - ms for entry, at in entries})
        leases = await self.client.zrange(KEYS.leases, 0, -1, withscores=True)
        if leases:
            await self.client.zadd(KEYS.leases, {lease: expiry - ms for lease, expiry in leases})
        self.offset_ms += ms


@pytest.fixture(params=["local", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[StoreHarness]:
    if request.param == "local":
        yield LocalHarness()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    client = connect_redis(redis_url)
    try:
        yield RedisHarness(client)
    finally:
        await client.aclose()


# Scenarios for both stores ---------------------------------------------------------------


async def test_new_target_starts_at_the_average_and_is_not_flooded(
    harness: StoreHarness,
) -> None:
    a, b = candidate("a", 1, 20.0), candidate("b", 2, 20.0)
    for target, actual in ((a, 100.0), (b, 400.0)):
        await harness.settle(target, await harness.select([target]), actual)
    c = candidate("c", 2, 40.0)

    # Per unit of weight a is at 100 and b at 200: c starts at their average, 150 per
    # unit of its weight 2. At 0 it would take every request for a while.
    first = await harness.select([a, b, c])
    assert first.index == 0
    assert first.score == pytest.approx(100.0, rel=1e-3)
    assert await harness.usage(["a", "b", "c"]) == pytest.approx([120.0, 400.0, 300.0], rel=1e-3)
    chosen = [first.index] + [(await harness.select([a, b, c])).index for _ in range(3)]
    assert chosen == [0, 0, 0, 2]


async def test_weighted_lowest_usage_balances_counted_usage(harness: StoreHarness) -> None:
    rng = random.Random(20240601)
    big, small = candidate("big", 3, 200.0), candidate("small", 1, 200.0)
    chosen: Counter[int | None] = Counter()
    for _ in range(50):
        # Eight requests in flight at once, then they finish with very different sizes.
        in_flight = [await harness.select([big, small]) for _ in range(8)]
        for selection in in_flight:
            assert selection.index is not None
            chosen[selection.index] += 1
            target = (big, small)[selection.index]
            await harness.settle(target, selection, float(rng.randint(20, 400)))
        await harness.advance(500)

    totals = await harness.totals(["big", "small"])
    big_tokens, small_tokens = totals["big"].total_tokens, totals["small"].total_tokens
    # Usage per unit of weight ends within a few percent; request counts follow suit.
    assert big_tokens / 3 == pytest.approx(small_tokens, rel=0.04)
    assert chosen[0] / chosen[1] == pytest.approx(3.0, rel=0.1)
    usage_big, usage_small = totals["big"].usage, totals["small"].usage
    assert usage_big / 3 == pytest.approx(usage_small, rel=0.05)


async def test_round_robin_follows_weights(harness: StoreHarness) -> None:
    targets = [candidate("a", 5), candidate("b", 1), candidate("c", 1)]
    targets.append(candidate("d", 9, eligible=False))

    chosen = [(await harness.select(targets, "round-robin")).index for _ in range(700)]

    assert chosen[:7] == [0, 0, 1, 0, 2, 0, 0]
    assert Counter(chosen) == {0: 500, 1: 100, 2: 100}


async def test_usage_decays_and_reservations_release_across_time(harness: StoreHarness) -> None:
    a = candidate("a", 1, 100.0)
    await harness.settle(a, await harness.select([a]), 100.0)

    await harness.advance(HALF_LIFE_MS)
    assert await harness.usage(["a"]) == pytest.approx([50.0], rel=1e-3)
    await harness.advance(HALF_LIFE_MS)
    assert await harness.usage(["a"]) == pytest.approx([25.0], rel=1e-3)

    # A reservation held across a half-life is swapped exactly for the actual usage:
    # a's earlier 25 decays to 12.5, plus the 40 this request really used.
    held = await harness.select([a])
    assert await harness.usage(["a"]) == pytest.approx([125.0], rel=1e-3)
    await harness.advance(HALF_LIFE_MS)
    assert await harness.usage(["a"]) == pytest.approx([62.5], rel=1e-3)
    await harness.settle(a, held, 40.0)
    assert await harness.usage(["a"]) == pytest.approx([52.5], rel=1e-3)


async def test_epoch_roll_keeps_decayed_usage(harness: StoreHarness) -> None:
    a, b = candidate("a", 1, 0.0), candidate("b", 1, 0.0)
    await harness.settle(a, await harness.select([a, b]), 64.0 * 2**30)
    await harness.settle(b, await harness.select([b]), 32.0 * 2**30)

    # 30 half-lives is past roll_after (20): the next selection moves the epoch.
    await harness.advance(30 * HALF_LIFE_MS)
    selection = await harness.select([a, b])

    assert selection.index == 1
    assert selection.score == pytest.approx(32.0, rel=1e-3)
    assert await harness.usage(["a", "b"]) == pytest.approx([64.0, 32.0], rel=1e-3)


async def test_round_robin_settles_keep_counting_for_days(harness: StoreHarness) -> None:
    # Only record_usage moves a round-robin balancer's epoch; without it the forward-decay
    # factor overflows after ~1024 half-lives (17 hours at 60 s) and every settle fails.
    a = candidate("a", 1)
    await harness.settle(a, await harness.select([a], "round-robin"), 100.0)
    await harness.advance(1100 * HALF_LIFE_MS)

    await harness.settle(a, await harness.select([a], "round-robin"), 8.0)

    totals = (await harness.totals(["a"]))["a"]
    assert (totals.requests, totals.total_tokens) == (2, 108)
    assert totals.usage == pytest.approx(8.0, rel=1e-3)


async def test_failed_requests_count_as_errors(harness: StoreHarness) -> None:
    a = candidate("a", 1, 50.0)
    await harness.settle(a, await harness.select([a]), 120.0, cost=0.25)
    await harness.settle(a, await harness.select([a]), 0.0, failed=True)
    await harness.settle(a, await harness.select([a]), 0.0, failed=True, cost=1e-06)

    totals = (await harness.totals(["a"]))["a"]

    assert (totals.requests, totals.errors) == (3, 2)
    assert (totals.prompt_tokens, totals.completion_tokens) == (30, 90)
    assert totals.cost == pytest.approx(0.250001)
    # Failed requests released their reservations: only the 120 that ran remains.
    assert totals.usage == pytest.approx(120.0, rel=1e-3)


async def test_a_retired_balancer_starts_again_from_nothing(harness: StoreHarness) -> None:
    """Its plugin was deleted: usage, totals and breaker state are gone (a plugin added
    again under the same name does not inherit them), and retiring again is harmless."""
    a, b = candidate("a", 1, 50.0), candidate("b", 1, 50.0)
    await harness.store.register("parity", KEYS, {"a": "{}", "b": "{}"})
    await harness.settle(a, await harness.select([a, b]), 120.0)
    assert (await harness.totals(["a"]))["a"].requests == 1

    await harness.store.retire("parity", KEYS)
    await harness.store.retire("parity", KEYS)

    assert await harness.totals(["a", "b"]) == {"a": TargetTotals(), "b": TargetTotals()}


async def test_over_release_clamps_usage_at_zero(harness: StoreHarness) -> None:
    a = candidate("a", 1, 10.0)
    await harness.settle(a, await harness.select([a]), 0.0, reserved=10.5, failed=True)
    assert await harness.usage(["a"]) == [0.0]

    # Negative usage would pull every request to a; clamped, the next 30 count in full.
    await harness.settle(a, await harness.select([a]), 30.0)
    assert await harness.usage(["a"]) == pytest.approx([30.0], rel=1e-3)


async def test_totals_shape(harness: StoreHarness) -> None:
    assert await harness.totals([]) == {}
    assert await harness.totals(["a"]) == {"a": TargetTotals()}

    a = candidate("a", 1, 10.0)
    await harness.settle(a, await harness.select([a]), 10.0, cost=0.5)
    totals = await harness.totals(["never", "a"])

    assert list(totals) == ["never", "a"]
    assert totals["never"] == TargetTotals()
    counted = totals["a"]
    assert isinstance(counted.requests, int)
    assert isinstance(counted.cost, float)
    assert isinstance(counted.usage, float)
    assert (counted.requests, counted.errors, counted.total_tokens) == (1, 0, 10)
    assert counted.cost == 0.5
    assert counted.usage == pytest.approx(10.0, rel=1e-3)


async def test_no_eligible_target(harness: StoreHarness) -> None:
    a = candidate("a", 1, 10.0, eligible=False)

    for algorithm in ("lowest-usage", "round-robin"):
        assert (await harness.select([a], algorithm)).index is None
        assert (await harness.select([], algorithm)).index is None
    assert await harness.usage(["a"]) == [0.0]


@pytest.mark.parametrize("algorithm", ["lowest-usage", "round-robin"])
async def test_circuit_breaker_opens_skips_and_closes(
    harness: StoreHarness, algorithm: Algorithm
) -> None:
    a, b = candidate("a", 1, 10.0), candidate("b", 1, 10.0)
    policy = {"breaker_failure": True, "max_fails": 2, "fail_timeout_ms": 5_000}

    # Failures count in total: a success in between does not reset them.
    await harness.settle(a, await harness.select([a], algorithm), 0.0, failed=True, **policy)
    await harness.settle(a, await harness.select([a], algorithm), 10.0)
    assert (await harness.select([a], algorithm)).index == 0  # one failure so far: still in
    opened = await harness.select([a], algorithm)
    await harness.settle(a, opened, 0.0, failed=True, **policy)

    # Out for fail_timeout: every selection skips it; alone, it is reported as broken.
    assert [(await harness.select([a, b], algorithm)).index for _ in range(3)] == [1, 1, 1]
    alone = await harness.select([a], algorithm)
    assert (alone.index, alone.blocked) == (None, "broken")
    assert alone.retry_at_ms - opened.reserved_at_ms == pytest.approx(5_000, abs=50)
    # A failure that does not count (say a 404) changes nothing.
    await harness.advance(4_000)
    uncounted = {**policy, "breaker_failure": False}
    await harness.settle(b, await harness.select([b], algorithm), 0.0, failed=True, **uncounted)
    assert (await harness.select([a], algorithm)).index is None

    await harness.advance(1_100)
    back = await harness.select([a], algorithm)
    assert (back.index, back.blocked, back.retry_at_ms) == (0, "", 0)


async def test_failures_further_apart_than_fail_timeout_do_not_open(
    harness: StoreHarness,
) -> None:
    a = candidate("a", 1, 10.0)
    policy = {"breaker_failure": True, "max_fails": 2, "fail_timeout_ms": 1_000}
    for _ in range(3):
        await harness.settle(a, await harness.select([a]), 0.0, failed=True, **policy)
        await harness.advance(1_000)
    assert (await harness.select([a])).index == 0


async def test_retry_after_holds_a_target_out_without_max_fails(harness: StoreHarness) -> None:
    a, b = candidate("a", 1, 10.0), candidate("b", 1, 10.0)
    limited = await harness.select([a, b], "round-robin")
    assert limited.index == 0
    await harness.settle(a, limited, 0.0, failed=True, retry_after_ms=20_000)
    await harness.settle(b, await harness.select([b]), 0.0, failed=True, retry_after_ms=5_000)

    both = await harness.select([a, b], "round-robin")
    assert (both.index, both.blocked) == (None, "broken")
    assert both.retry_at_ms - limited.reserved_at_ms == pytest.approx(5_000, abs=50)
    await harness.advance(6_000)
    assert [(await harness.select([a, b], "round-robin")).index for _ in range(2)] == [1, 1]
    await harness.advance(15_000)
    assert (await harness.select([a], "round-robin")).index == 0


async def test_least_connections_counts_leases_and_expires_orphans(
    harness: StoreHarness,
) -> None:
    a, b = candidate("a", 2, lease_ms=30_000), candidate("b", 1, lease_ms=30_000)
    held = [await harness.select([a, b], "least-connections") for _ in range(6)]
    assert [s.index for s in held] == [0, 0, 1, 0, 1, 0]
    assert [t.in_flight for t in (await harness.totals(["a", "b"])).values()] == [4, 2]

    # Two of a's requests finish; b's two are orphaned (their replica died).
    for selection in held[:2]:
        await harness.settle(a, selection, 10.0)
    assert (await harness.totals(["a"]))["a"].in_flight == 2
    assert (await harness.select([a, b], "least-connections")).index == 0  # 3/2 < 3/1
    await harness.settle(a, held[3], 10.0)

    # Past the lease, the orphans (and every unsettled lease) stop counting.
    await harness.advance(30_000)
    after = await harness.select([a, b], "least-connections")
    assert (after.index, after.score) == (0, 0.0)
    assert [t.in_flight for t in (await harness.totals(["a", "b"])).values()] == [1, 0]
    # Settling a swept lease changes nothing.
    await harness.settle(b, held[2], 10.0)
    assert (await harness.totals(["b"]))["b"].in_flight == 0


async def test_consistent_hashing_walks_the_ranking_past_unavailable_targets(
    harness: StoreHarness,
) -> None:
    ranked = [candidate("a", tier=1), candidate("b", tier=2), candidate("c", tier=0)]
    assert [(await harness.select(ranked, "consistent-hashing")).index for _ in range(3)] == [2] * 3
    tried = [ranked[0], ranked[1], candidate("c", tier=0, eligible=False)]
    assert (await harness.select(tried, "consistent-hashing")).index == 0
    policy = {"breaker_failure": True, "max_fails": 1, "fail_timeout_ms": 1_000}
    await harness.settle(
        ranked[0], await harness.select(tried, "consistent-hashing"), 0.0, failed=True, **policy
    )
    assert (await harness.select(tried, "consistent-hashing")).index == 1
    await harness.advance(1_000)
    assert (await harness.select(tried, "consistent-hashing")).index == 0


@pytest.mark.parametrize(
    "algorithm", ["lowest-usage", "round-robin", "least-connections", "lowest-latency", "priority"]
)
async def test_lower_tiers_serve_only_when_the_higher_is_unavailable(
    harness: StoreHarness, algorithm: Algorithm
) -> None:
    targets = [candidate("low", 1, 5.0, tier=1), candidate("x", 1, 5.0), candidate("y", 1, 5.0)]
    chosen = [(await harness.select(targets, algorithm)).index for _ in range(6)]
    assert sorted(set(chosen)) == [1, 2]
    policy = {"breaker_failure": True, "max_fails": 1, "fail_timeout_ms": 1_000}
    for target in targets[1:]:
        await harness.settle(
            target, await harness.select([target], algorithm), 0.0, failed=True, **policy
        )
    assert (await harness.select(targets, algorithm)).index == 0


async def test_lowest_latency_prefers_the_fastest_and_explores_the_rest(
    harness: StoreHarness,
) -> None:
    fast, slow, new = candidate("fast"), candidate("slow"), candidate("new")

    # Never measured: each is explored once, in order, then the samples decide.
    first = await harness.select([fast, slow], "lowest-latency")
    second = await harness.select([fast, slow], "lowest-latency")
    assert (first.index, second.index) == (0, 1)
    await harness.settle(fast, first, 10.0, latency=2.0)
    await harness.settle(slow, second, 10.0, latency=8.0)
    chosen = [(await harness.select([fast, slow], "lowest-latency")).index for _ in range(3)]
    assert chosen == [0, 0, 0]
    assert (await harness.totals(["fast"]))["fast"].latency == pytest.approx(2.0)

    # A newcomer is explored once (no average: score 0), then waits for its sample.
    probe = await harness.select([fast, slow, new], "lowest-latency")
    assert (probe.index, probe.score) == (2, 0.0)
    assert (await harness.select([fast, slow, new], "lowest-latency")).index == 0

    # fast slows down: a quarter half-life on, its first slow answer (20) weighs 1 against
    # 2^-0.25 for the old 2, and its mean passes slow's 8.
    await harness.advance(HALF_LIFE_MS // 4)
    selection = await harness.select([fast, slow], "lowest-latency")
    assert selection.index == 0
    await harness.settle(fast, selection, 10.0, latency=20.0)
    old_weight = 2.0**-0.25
    expected = (2.0 * old_weight + 20.0) / (old_weight + 1)
    assert (await harness.totals(["fast"]))["fast"].latency == pytest.approx(expected, rel=1e-3)
    assert (await harness.select([fast, slow], "lowest-latency")).index == 1

    # A half-life without news: explored again, once.
    await harness.advance(HALF_LIFE_MS)
    chosen = [(await harness.select([fast, slow], "lowest-latency")).index for _ in range(3)]
    assert chosen == [0, 1, 1]


async def test_lowest_latency_spreads_a_cold_start_until_the_first_answer(
    harness: StoreHarness,
) -> None:
    """The first target, slow to answer, must not take every request meanwhile."""
    slow, fast = candidate("slow"), candidate("fast")
    # Nothing measured: each explored in turn, then again, least recently explored first.
    chosen = []
    for _ in range(4):
        chosen.append((await harness.select([slow, fast], "lowest-latency")).index)
        await harness.advance(2)  # the local clock; Redis's is real:
        await asyncio.sleep(0.002)
    assert chosen == [0, 1, 0, 1]
    # fast answers first: it takes everything until slow's answer arrives.
    await harness.settle(fast, await harness.select([fast], "lowest-latency"), 1.0, latency=5.0)
    chosen = [(await harness.select([slow, fast], "lowest-latency")).index for _ in range(3)]
    assert chosen == [1, 1, 1]
    await harness.settle(slow, await harness.select([slow], "lowest-latency"), 1.0, latency=3.0)
    assert (await harness.select([slow, fast], "lowest-latency")).index == 0


async def test_budgets_hold_per_sliding_minute(harness: StoreHarness) -> None:
    a, b = candidate("a", tokens=40, tpm=100), candidate("b", tokens=10, rpm=2)
    first = await harness.select([a, b], "round-robin")
    assert first.index == 0
    assert (await harness.select([a])).index == 0  # 80 of 100
    # a is full: b serves; b then is full too (2 requests).
    assert [(await harness.select([a, b], "round-robin")).index for _ in range(2)] == [1, 1]
    full = await harness.select([a, b], "round-robin")
    assert (full.index, full.blocked) == (None, "tokens")
    assert full.retry_at_ms == first.reserved_at_ms + 60_000

    # a's first request used 15 of its 40 tokens: room for one more.
    await harness.settle(a, first, 15.0)
    assert (await harness.select([a, b], "round-robin")).index == 0
    assert (await harness.select([a])).blocked == "tokens"

    # A minute after the first reservations the window has room again.
    await harness.advance(30_000)
    assert (await harness.select([b])).blocked == "requests"
    await harness.advance(30_000)
    assert (await harness.select([b])).index == 0
    assert (await harness.select([a])).index == 0


async def test_a_failed_attempt_frees_its_tokens_but_counts_as_a_request(
    harness: StoreHarness,
) -> None:
    a = candidate("a", tokens=60, tpm=100, rpm=3)
    failed = await harness.select([a])
    await harness.settle(a, failed, 0.0, failed=True)
    second = await harness.select([a])
    assert second.index == 0  # 0 + 60 tokens fits again
    # Both limits hold the third back (3 requests; 120 tokens): it must wait for the later,
    # the second's 60 tokens leaving the window.
    await harness.advance(1_000)
    third = await harness.select([a])
    assert (third.index, third.blocked) == (None, "tokens")
    assert third.retry_at_ms == second.reserved_at_ms + 60_000
    # With only 10 tokens it fits; the next is held back by the requests limit alone.
    small = candidate("a", tokens=10, tpm=100, rpm=3)
    assert (await harness.select([small])).index == 0
    fourth = await harness.select([small])
    assert (fourth.index, fourth.blocked) == (None, "requests")
    assert fourth.retry_at_ms == failed.reserved_at_ms + 60_000


# ResilientStore --------------------------------------------------------------------------


class CountingRedisStore(RedisStore):
    """Counts how often requests try the primary, and fails on demand (``down``)."""

    select_attempts = 0
    down = False

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        self.select_attempts += 1
        if self.down:
            raise RedisConnectionError("simulated outage")
        return await super().select(keys, algorithm, half_life_ms, candidates)

    async def ping(self) -> None:
        if self.down:
            raise RedisConnectionError("simulated outage")
        await super().ping()

    async def retire(self, balancer_id: str, keys: BalancerKeys) -> None:
        if self.down:
            raise RedisConnectionError("simulated outage")
        await super().retire(balancer_id, keys)


@pytest.fixture
def late_redis() -> Iterator[list[ManagedProcess]]:
    """Holds the redis-servers a test starts itself, and stops them afterwards."""
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.stop()


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == RESILIENT_LOGGER and record.levelno == logging.WARNING
    ]


async def wait_rejoined(store: ResilientStore, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if not store.degraded:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still degraded after {timeout_s} s")


async def test_resilient_store_falls_back_and_rejoins(
    caplog: pytest.LogCaptureFixture,
    process_logs: Path,
    late_redis: list[ManagedProcess],
) -> None:
    dead_port = free_port()
    caplog.set_level(logging.WARNING, logger=RESILIENT_LOGGER)
    retry_interval_s = 0.2
    primary = CountingRedisStore(connect_redis(f"redis://127.0.0.1:{dead_port}"))
    fallback = LocalStore(clock_ms=lambda: 1_700_000_000_000)  # frozen: no decay
    store = ResilientStore(primary, fallback, retry_interval_s=retry_interval_s)
    targets = [candidate("a", 1, 10.0), candidate("b", 1, 10.0)]
    try:
        # Redis is down: selections still balance, on the local counters.
        down = [await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, targets) for _ in range(10)]
        assert [s.backend for s in down] == ["local"] * 10
        assert [s.index for s in down] == [0, 1] * 5
        assert store.degraded
        assert primary.select_attempts == 1  # the failure that revealed the outage

        # Requests never probe a dead Redis: a background probe does, without warning.
        await asyncio.sleep(retry_interval_s * 2.5)
        for _ in range(10):
            selection = await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, targets)
            assert selection.backend == "local"
        assert primary.select_attempts == 1
        assert store.degraded
        assert store.outages == 1
        assert len(warnings_logged(caplog)) == 1
        assert "unreachable" in warnings_logged(caplog)[0]

        # A fallback selection is settled on the local store.
        settlement = Settlement("a", 10.0, down[0].reserved_at_ms, 25.0, 5, 20, 0.1, False, "local")
        await store.settle(KEYS, HALF_LIFE_MS, settlement)
        local = (await fallback.totals(KEYS, HALF_LIFE_MS, ["a"]))["a"]
        assert (local.requests, local.total_tokens) == (1, 25)
        # Ten reservations of 10 on a, one of them swapped for its actual 25.
        assert local.usage == 115.0
        assert (await store.totals(KEYS, HALF_LIFE_MS, ["a"]))["a"].requests == 1
        # Announced while down: kept, and announced to Redis when it returns.
        await store.register("parity", KEYS, {"a": '{"model": "a"}'})

        # Redis comes up on that port: the probe finds it and the store rejoins.
        process, _ = start_redis(process_logs, dead_port)
        late_redis.append(process)
        await wait_rejoined(store)
        assert await primary.client.smembers(BALANCERS_KEY) == {"parity"}
        assert await primary.client.hgetall(KEYS.targets) == {"a": '{"model": "a"}'}
        back = await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, targets)
        assert back.backend == "redis"
        assert back.index == 0  # Redis has none of the local usage
        assert len(warnings_logged(caplog)) == 2
        assert warnings_logged(caplog)[1].startswith("Redis is reachable again after ")

        # ...and a Redis selection is settled on Redis, not locally.
        settlement = Settlement("a", 10.0, back.reserved_at_ms, 30.0, 10, 20, 0.2, False, "redis")
        await store.settle(KEYS, HALF_LIFE_MS, settlement)
        assert await primary.client.hget(KEYS.totals, "a:requests") == "1"
        assert (await fallback.totals(KEYS, HALF_LIFE_MS, ["a"]))["a"].requests == 1
        assert (await store.totals(KEYS, HALF_LIFE_MS, ["a"]))["a"].total_tokens == 30
        assert len(warnings_logged(caplog)) == 2
    finally:
        await store.close()


async def test_reservations_from_before_an_outage_are_not_released_twice(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarted empty while a request was in flight: settling it adds its usage and
    subtracts no reservation that the new Redis never had."""
    caplog.set_level(logging.WARNING, logger=RESILIENT_LOGGER)
    primary = CountingRedisStore(connect_redis(redis_url))
    store = ResilientStore(primary, LocalStore(), retry_interval_s=0.05)
    a, b = candidate("a", 1, 10.0), candidate("b", 1, 10.0)
    try:
        before = await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, [a, b])
        assert (before.backend, before.index) == ("redis", 0)
        primary.down = True
        assert (await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, [a, b])).backend == "local"
        await primary.client.flushall()  # it comes back without its data
        primary.down = False
        await wait_rejoined(store)
        # The new Redis balances from scratch: b takes 40 while a is still in flight.
        fresh = await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, [candidate("b", 1, 40.0)])
        assert fresh.backend == "redis"
        await store.settle(
            KEYS,
            HALF_LIFE_MS,
            Settlement("a", 10.0, before.reserved_at_ms, 25.0, 5, 20, 0.0, False, "redis"),
        )
        usage = await store.totals(KEYS, HALF_LIFE_MS, ["a", "b"])
        assert usage["a"].usage == pytest.approx(25.0, rel=1e-3)  # not 25 - 10
        assert usage["b"].usage == pytest.approx(40.0, rel=1e-3)
        assert store.outages == 1
    finally:
        await store.close()


async def test_events_settled_during_an_outage_reach_the_stream_when_redis_returns(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What was served on local counters still reaches the aggregators: late, flagged."""
    caplog.set_level(logging.WARNING, logger=RESILIENT_LOGGER)
    primary = CountingRedisStore(connect_redis(redis_url))
    store = ResilientStore(primary, LocalStore(), retry_interval_s=0.05, backlog_limit=3)
    a, b = candidate("a", 1, 10.0), candidate("b", 1, 10.0)

    def settlement(selection: Selection, span: str) -> Settlement:
        event = usage_event(target="a", span_id=span, prompt_tokens=5, completion_tokens=20)
        return Settlement(
            "a", 10.0, selection.reserved_at_ms, 25.0, 5, 20, 0.0, False, selection.backend, event
        )

    try:
        in_flight = await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, [a, b])
        primary.down = True
        local = [await store.select(KEYS, "lowest-usage", HALF_LIFE_MS, [a, b]) for _ in range(4)]
        assert {s.backend for s in local} == {"local"}
        for index, selection in enumerate(local):
            await store.settle(KEYS, HALF_LIFE_MS, settlement(selection, f"{index + 2:016x}"))
        # The Redis selection in flight when Redis went away is settled locally too.
        await store.settle(KEYS, HALF_LIFE_MS, settlement(in_flight, "1" * 16))
        assert await primary.client.xlen(KEYS.events) == 0
        primary.down = False
        await wait_rejoined(store)

        entries = await primary.client.xrange(KEYS.events)
        events = [decode_event(fields[EVENT_FIELD]) for _, fields in entries]
        # Five settled, room for three: the oldest two were dropped, and said so.
        assert [e.span_id for e in events] == [f"{4:016x}", f"{5:016x}", "1" * 16]
        # Degraded: chosen on local counters; the in-flight one was chosen by Redis.
        assert [e.degraded for e in events] == [True, True, False]
        assert warnings_logged(caplog)[-1].endswith(
            "(3 usage events from the outage appended, 2 dropped)"
        )

        # A locally chosen request that finishes after the rejoin is appended at once.
        await store.settle(KEYS, HALF_LIFE_MS, settlement(local[0], "f" * 16))
        assert await primary.client.xlen(KEYS.events) == 4
    finally:
        await store.close()


async def test_retiring_deletes_every_key_of_the_balancer_and_only_those(redis_url: str) -> None:
    store = RedisStore(connect_redis(redis_url))
    other = balancer_keys("other")
    a = candidate("a", 1, 10.0, tokens=5, tpm=1000)
    try:
        for keys, balancer in ((KEYS, "parity"), (other, "other")):
            await store.register(balancer, keys, {"a": "{}"})
            selection = await store.select(keys, "lowest-usage", HALF_LIFE_MS, [a])
            event = usage_event(target="a")
            await store.settle(
                keys,
                HALF_LIFE_MS,
                Settlement(
                    "a", 10.0, selection.reserved_at_ms, 12.0, 4, 8, 0.0, False, "redis", event,
                    lease_id=selection.lease_id, budget_reserved=5, budget_used=12,
                ),
            )  # fmt: skip
            await store.client.hset(keys.rollup(28_000_000), "a:requests", 1)
        before = set(await store.client.keys("*"))
        parity = {key for key in before if key.startswith("tokenlb:{parity}:")}
        assert {KEYS.usage, KEYS.totals, KEYS.events, KEYS.targets, KEYS.budget_window("a")} <= (
            parity
        )

        await store.retire("parity", KEYS)

        assert set(await store.client.keys("*")) == before - parity
        assert await store.client.smembers(BALANCERS_KEY) == {"other"}
    finally:
        await store.close()


async def test_a_balancer_retired_during_an_outage_is_deleted_when_redis_returns(
    redis_url: str,
) -> None:
    primary = CountingRedisStore(connect_redis(redis_url))
    store = ResilientStore(primary, LocalStore(), retry_interval_s=0.05)
    gone, stays = balancer_keys("gone"), balancer_keys("stays")
    try:
        await store.register("gone", gone, {"a": "{}"})
        await store.register("stays", stays, {"a": "{}"})
        await store.register("elsewhere", balancer_keys("elsewhere"), {"a": "{}"})
        primary.down = True
        await store.retire("gone", gone)
        assert store.degraded
        # Another replica removed this one: forget it, leave its state to that replica.
        store.keep_only({"stays"})
        await primary.client.delete(BALANCERS_KEY)  # as if Redis had restarted empty
        primary.down = False
        await wait_rejoined(store)

        assert await primary.client.smembers(BALANCERS_KEY) == {"stays"}
        assert await primary.client.exists(gone.targets) == 0
        assert await primary.client.exists(stays.targets) == 1
    finally:
        await store.close()
