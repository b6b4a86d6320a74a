"""In-process balancer state with the same semantics as the Lua scripts.

This is the embedded default (no Redis URL) and the fallback while Redis is unreachable.
Each method mirrors one script in ``lua/`` line for line, so the balancing tests run
unchanged against both stores. It is safe on one event loop: no method awaits while it
holds state half-updated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.rollups import MinuteRollup, TargetRollup
from tokenlb_proxy.store.base import (
    DEFAULT_ROLL_AFTER,
    Algorithm,
    Candidate,
    Selection,
    Settlement,
    TargetTotals,
)
from tokenlb_proxy.store.local_budget import BudgetWindow

__all__ = ["LocalStore"]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _Breaker:
    """One target's circuit breaker (the fields of the breaker hash in Redis)."""

    __slots__ = ("fails", "since_ms", "until_ms")

    def __init__(self) -> None:
        self.until_ms = 0
        self.fails = 0
        self.since_ms: int | None = None


class _Latency:
    """One target's lowest-latency state (the fields of the latency hash in Redis)."""

    __slots__ = ("at_ms", "average", "probe_ms", "weight")

    def __init__(self) -> None:
        self.average: float | None = None
        self.weight = 0.0
        self.at_ms: int | None = None
        self.probe_ms: int | None = None


def _exploration_due(latency: _Latency, now_ms: int, half_life_ms: int) -> bool:
    """Whether ``latency``'s target has neither answered nor been explored for a
    half-life (or ever)."""
    seen = [t for t in (latency.at_ms, latency.probe_ms) if t is not None]
    return not seen or now_ms - max(seen) >= half_life_ms


class _BalancerState:
    __slots__ = (
        "breakers",
        "budgets",
        "epoch_ms",
        "in_flight",
        "latency",
        "lease_seq",
        "leases",
        "minutes",
        "round_robin",
        "targets",
        "totals",
        "usage",
    )

    def __init__(self) -> None:
        self.usage: dict[str, float] = {}
        self.epoch_ms: int | None = None
        self.round_robin: dict[str, int] = {}
        self.totals: dict[str, TargetTotals] = {}
        self.targets: dict[str, str] = {}
        #: minute -> rollup, for as long as ``rollup_retention_s``.
        self.minutes: dict[int, MinuteRollup] = {}
        self.breakers: dict[str, _Breaker] = {}
        #: In-flight leases (least-connections): (target id, lease id) -> expiry (ms).
        self.leases: dict[tuple[str, str], int] = {}
        self.in_flight: dict[str, int] = {}
        self.lease_seq = 0
        self.latency: dict[str, _Latency] = {}
        self.budgets: dict[str, BudgetWindow] = {}


class LocalStore:
    """Balancer state in a dict, for one replica on its own."""

    kind = "local"

    def __init__(
        self,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        roll_after: float = DEFAULT_ROLL_AFTER,
        rollup_retention_s: int = 86400,
    ) -> None:
        self._clock_ms = clock_ms
        self._roll_after = roll_after
        self._rollup_retention_minutes = max(1, rollup_retention_s // 60)
        self._balancers: dict[str, _BalancerState] = {}

    def _state(self, keys: BalancerKeys) -> _BalancerState:
        state = self._balancers.get(keys.usage)
        if state is None:
            state = self._balancers[keys.usage] = _BalancerState()
        return state

    def _exponent(self, state: _BalancerState, now_ms: int, half_life_ms: int) -> float:
        """The forward-decay exponent at ``now_ms``, rolling the epoch like the script does."""
        if state.epoch_ms is None:
            state.epoch_ms = now_ms
        exponent = (now_ms - state.epoch_ms) / half_life_ms
        if exponent > self._roll_after:
            shrink = 2.0 ** (-exponent)
            for target_id in state.usage:
                state.usage[target_id] *= shrink
            state.epoch_ms = now_ms
            exponent = 0.0
        return exponent

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        state = self._state(keys)
        now_ms = self._clock_ms()
        exponent = 0.0
        if algorithm == "lowest-usage":
            exponent = self._exponent(state, now_ms, half_life_ms)
        if not candidates:
            return Selection(None, now_ms, 0.0)
        available: list[bool] = []
        broken_until: dict[int, int] = {}
        over_budget: list[int] = []
        for index, c in enumerate(candidates):
            breaker = state.breakers.get(c.target_id)
            until_ms = breaker.until_ms if breaker is not None else 0
            fits = c.eligible
            if c.eligible and until_ms > now_ms:
                broken_until[index] = until_ms
                fits = False
            elif c.eligible and (c.tokens_per_minute or c.requests_per_minute):
                window = state.budgets.setdefault(c.target_id, BudgetWindow())
                requests, used = window.sweep(now_ms)
                if window.over(
                    requests, used, c.tokens, c.tokens_per_minute, c.requests_per_minute
                ):
                    over_budget.append(index)
                    fits = False
            available.append(fits)
        tiers = [c.tier for i, c in enumerate(candidates) if available[i]]
        if tiers:
            best_tier = min(tiers)
            available = [
                ok and c.tier == best_tier for ok, c in zip(available, candidates, strict=True)
            ]
        best: int | None = None
        best_score = 0.0
        lease_id = ""
        if algorithm == "lowest-usage":
            best, best_score = self._lowest_usage(state, candidates, available, exponent)
        elif algorithm == "least-connections" and any(available):
            best, best_score, lease_id = self._least_connections(
                state, candidates, available, now_ms
            )
        elif algorithm == "lowest-latency" and any(available):
            best, best_score = self._lowest_latency(
                state, candidates, available, now_ms, half_life_ms
            )
        elif algorithm == "consistent-hashing":
            best = available.index(True) if any(available) else None
        elif any(available):
            best = self._round_robin(state, candidates, available)
        if best is None:
            blocked, retry_at_ms = self._blocked(
                state, candidates, broken_until, over_budget, now_ms
            )
            return Selection(None, now_ms, 0.0, blocked=blocked, retry_at_ms=retry_at_ms)
        chosen = candidates[best]
        if chosen.tokens_per_minute or chosen.requests_per_minute:
            if not lease_id:
                state.lease_seq += 1
                lease_id = str(state.lease_seq)
            window = state.budgets.setdefault(chosen.target_id, BudgetWindow())
            window.reserve(lease_id, chosen.tokens, now_ms)
        return Selection(best, now_ms, best_score, lease_id=lease_id)

    @staticmethod
    def _blocked(
        state: _BalancerState,
        candidates: Sequence[Candidate],
        broken_until: dict[int, int],
        over_budget: list[int],
        now_ms: int,
    ) -> tuple[str, int]:
        """select_target.lua's account of why nothing was chosen, and until when."""
        blocked, retry_at_ms = "", 0
        if broken_until:
            blocked, retry_at_ms = "broken", min(broken_until.values())
        budget_reason, budget_at_ms = "", 0
        for index in over_budget:
            c = candidates[index]
            at_ms, reason = state.budgets[c.target_id].retry_at(
                c.tokens, c.tokens_per_minute, c.requests_per_minute, now_ms
            )
            if budget_at_ms == 0 or at_ms < budget_at_ms:
                budget_at_ms, budget_reason = at_ms, reason
        if budget_reason:
            blocked = budget_reason
            if retry_at_ms == 0 or budget_at_ms < retry_at_ms:
                retry_at_ms = budget_at_ms
        return blocked, retry_at_ms

    def _least_connections(
        self,
        state: _BalancerState,
        candidates: Sequence[Candidate],
        available: Sequence[bool],
        now_ms: int,
    ) -> tuple[int, float, str]:
        for lease, expiry_ms in list(state.leases.items()):
            if expiry_ms <= now_ms:
                del state.leases[lease]
                self._release(state, lease[0])
        in_flight = [state.in_flight.get(c.target_id, 0) for c in candidates]
        scores = [(in_flight[i] + 1) / c.weight for i, c in enumerate(candidates)]
        lowest = min(score for i, score in enumerate(scores) if available[i])
        tied = [available[i] and scores[i] == lowest for i in range(len(candidates))]
        best = self._round_robin(state, candidates, tied)
        assert best is not None
        chosen = candidates[best]
        state.lease_seq += 1
        lease_id = str(state.lease_seq)
        state.leases[(chosen.target_id, lease_id)] = now_ms + chosen.lease_ms
        state.in_flight[chosen.target_id] = in_flight[best] + 1
        return best, float(in_flight[best]), lease_id

    @staticmethod
    def _lowest_latency(
        state: _BalancerState,
        candidates: Sequence[Candidate],
        available: Sequence[bool],
        now_ms: int,
        half_life_ms: int,
    ) -> tuple[int, float]:
        """select_target.lua's rule: explore a target unseen for a half-life, else the
        lowest average among measured targets, else (nothing measured yet) explore the one
        explored longest ago."""
        stats = [state.latency.setdefault(c.target_id, _Latency()) for c in candidates]
        candidates_up = [i for i, ok in enumerate(available) if ok]
        due = [i for i in candidates_up if _exploration_due(stats[i], now_ms, half_life_ms)]
        measured = [i for i in candidates_up if stats[i].average is not None]
        if due:
            best = due[0]
        elif measured:
            best = min(measured, key=lambda i: stats[i].average or 0.0)
        else:
            best = min(candidates_up, key=lambda i: stats[i].probe_ms or -1)
        if due or not measured:
            stats[best].probe_ms = now_ms
        return best, stats[best].average or 0.0

    @staticmethod
    def _release(state: _BalancerState, target_id: str) -> None:
        left = state.in_flight.get(target_id, 0) - 1
        if left <= 0:
            state.in_flight.pop(target_id, None)
        else:
            state.in_flight[target_id] = left

    @staticmethod
    def _lowest_usage(
        state: _BalancerState,
        candidates: Sequence[Candidate],
        available: Sequence[bool],
        exponent: float,
    ) -> tuple[int | None, float]:
        known = [
            state.usage[c.target_id] / c.weight for c in candidates if c.target_id in state.usage
        ]
        average = sum(known) / len(known) if known else 0.0
        for c in candidates:
            state.usage.setdefault(c.target_id, average * c.weight)
        best: int | None = None
        best_score = 0.0
        for index, c in enumerate(candidates):
            if not available[index]:
                continue
            score = state.usage[c.target_id] / c.weight
            if best is None or score < best_score:
                best, best_score = index, score
        if best is None:
            return None, 0.0
        chosen = candidates[best]
        if chosen.estimate > 0:
            state.usage[chosen.target_id] += chosen.estimate * 2.0**exponent
        return best, best_score * 2.0 ** (-exponent)

    @staticmethod
    def _round_robin(
        state: _BalancerState, candidates: Sequence[Candidate], available: Sequence[bool]
    ) -> int | None:
        best: int | None = None
        best_current = 0
        total = 0
        for index, c in enumerate(candidates):
            if not available[index]:
                continue
            total += c.weight
            current = state.round_robin.get(c.target_id, 0) + c.weight
            state.round_robin[c.target_id] = current
            if best is None or current > best_current:
                best, best_current = index, current
        if best is not None:
            state.round_robin[candidates[best].target_id] -= total
        return best

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        state = self._state(keys)
        now_ms = self._clock_ms()
        reserved = settlement.reserved
        if state.epoch_ms is None:
            state.epoch_ms = now_ms
            reserved = 0.0
        self._exponent(state, now_ms, half_life_ms)  # rolls the epoch, as record_usage.lua
        epoch_ms = state.epoch_ms
        delta = settlement.actual * 2.0 ** ((now_ms - epoch_ms) / half_life_ms) - (
            reserved * 2.0 ** ((settlement.reserved_at_ms - epoch_ms) / half_life_ms)
        )
        target_id = settlement.target_id
        state.usage[target_id] = max(0.0, state.usage.get(target_id, 0.0) + delta)
        totals = state.totals.setdefault(target_id, TargetTotals())
        totals.requests += 1
        totals.errors += int(settlement.failed)
        totals.prompt_tokens += settlement.prompt_tokens
        totals.completion_tokens += settlement.completion_tokens
        totals.cost += settlement.cost
        if settlement.event is not None:
            self._add_to_rollup(state, settlement)
        lease = (target_id, settlement.lease_id)
        if settlement.lease_id and state.leases.pop(lease, None) is not None:
            self._release(state, target_id)
        window = state.budgets.get(target_id)
        if settlement.budget_reserved >= 0 and settlement.lease_id and window is not None:
            window.settle(settlement.lease_id, settlement.budget_reserved, settlement.budget_used)
        if settlement.latency >= 0:
            self._add_latency(state, settlement, now_ms, half_life_ms)
        self._feed_breaker(state, settlement, now_ms)

    @staticmethod
    def _add_latency(
        state: _BalancerState, settlement: Settlement, now_ms: int, half_life_ms: int
    ) -> None:
        """record_usage.lua's time-decayed mean, step for step."""
        latency = state.latency.setdefault(settlement.target_id, _Latency())
        last_ms = now_ms if latency.at_ms is None else latency.at_ms
        latency.weight = latency.weight * 2.0 ** (-(now_ms - last_ms) / half_life_ms) + 1
        average = latency.average or 0.0
        latency.average = average + (settlement.latency - average) / latency.weight
        latency.at_ms = now_ms

    @staticmethod
    def _feed_breaker(state: _BalancerState, settlement: Settlement, now_ms: int) -> None:
        """record_usage.lua's circuit breaker, step for step."""
        out_until_ms = 0
        if settlement.retry_after_ms > 0:
            out_until_ms = now_ms + settlement.retry_after_ms
        breaker = state.breakers.get(settlement.target_id)
        if settlement.breaker_failure and settlement.max_fails > 0:
            if breaker is None:
                breaker = state.breakers[settlement.target_id] = _Breaker()
            if breaker.since_ms is None or now_ms - breaker.since_ms >= settlement.fail_timeout_ms:
                breaker.fails, breaker.since_ms = 0, now_ms
            breaker.fails += 1
            if breaker.fails >= settlement.max_fails:
                out_until_ms = max(out_until_ms, now_ms + settlement.fail_timeout_ms)
                breaker.fails, breaker.since_ms = 0, None
        if out_until_ms > 0:
            if breaker is None:
                breaker = state.breakers[settlement.target_id] = _Breaker()
            breaker.until_ms = max(breaker.until_ms, out_until_ms)

    def _add_to_rollup(self, state: _BalancerState, settlement: Settlement) -> None:
        """What the aggregator does for Redis, done in place: there is no stream here."""
        assert settlement.event is not None
        minute = int(settlement.event.end_ms // 60_000)
        rollup = state.minutes.get(minute)
        if rollup is None:
            rollup = state.minutes[minute] = MinuteRollup(minute=minute)
            oldest = minute - self._rollup_retention_minutes
            for expired in [m for m in state.minutes if m <= oldest]:
                del state.minutes[expired]
        rollup.targets.setdefault(settlement.target_id, TargetRollup()).add_request(
            failed=settlement.failed,
            prompt_tokens=settlement.prompt_tokens,
            completion_tokens=settlement.completion_tokens,
            cost=settlement.cost,
            latency_ms=settlement.event.upstream_ms,
        )

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        state = self._state(keys)
        now_ms = self._clock_ms()
        decay = (
            2.0 ** (-(now_ms - state.epoch_ms) / half_life_ms) if state.epoch_ms is not None else 0
        )
        result: dict[str, TargetTotals] = {}
        for target_id in target_ids:
            counted = state.totals.get(target_id, TargetTotals())
            result[target_id] = TargetTotals(
                requests=counted.requests,
                errors=counted.errors,
                prompt_tokens=counted.prompt_tokens,
                completion_tokens=counted.completion_tokens,
                cost=counted.cost,
                usage=state.usage.get(target_id, 0.0) * decay,
                in_flight=state.in_flight.get(target_id, 0),
                latency=latency.average if (latency := state.latency.get(target_id)) else None,
            )
        return result

    async def register(
        self,
        balancer_id: str,
        keys: BalancerKeys,
        targets: dict[str, str],
        balancer: dict[str, str] | None = None,
    ) -> None:
        # No one reads ``balancer`` here: /stats on the embedded store has the plan itself.
        self._state(keys).targets.update(targets)

    async def retire(self, balancer_id: str, keys: BalancerKeys) -> None:
        self._balancers.pop(keys.usage, None)

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        state = self._state(keys)
        return [state.minutes[m] for m in minutes if m in state.minutes]

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None
