"""The store interface shared by the Redis and in-process implementations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

from tokenlb_proxy.events import UsageEvent
from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.rollups import MinuteRollup

__all__ = [
    "DEFAULT_ROLL_AFTER",
    "Algorithm",
    "Candidate",
    "Selection",
    "Settlement",
    "TargetTotals",
    "UsageStore",
]

Algorithm = Literal[
    "lowest-usage",
    "round-robin",
    "least-connections",
    "consistent-hashing",
    "lowest-latency",
    "priority",
]

#: Move the decay epoch once the forward-decay factor passes 2^20: scores stay far from
#: float overflow and keep ~10 significant digits of the smallest target's usage.
DEFAULT_ROLL_AFTER = 20.0
#: Approximate cap on a balancer's event stream. Aggregators trim what they acknowledged
#: within seconds, so in normal operation the stream holds only unread events; the cap
#: only bounds memory (~400 bytes an event) when no aggregator runs at all.
DEFAULT_STREAM_MAX_LEN = 100_000


class Candidate(msgspec.Struct, frozen=True):
    """One target as the selection sees it."""

    target_id: str
    weight: int
    #: Counted units (tokens or cost) this request is expected to use on this target.
    estimate: float
    #: False for targets that may not serve this request (other model, already tried);
    #: they still take part in the slow-start average.
    eligible: bool
    #: least-connections: how long the in-flight lease taken on this target lives (ms) if
    #: the request never settles (its replica died).
    lease_ms: int = 600_000
    #: Preference rank: only the available candidates of the lowest tier compete
    #: (consistent-hashing ranks targets in the order the request's key tries them;
    #: priority puts each group of equal weight in a tier, the heaviest first).
    tier: int = 0
    #: Budgets (the ``limits`` extension): the tokens this request reserves on the target,
    #: and its limits per sliding minute (0: none).
    tokens: int = 0
    tokens_per_minute: int = 0
    requests_per_minute: int = 0


class Selection(msgspec.Struct, frozen=True):
    """What a selection chose; ``index`` is None when no candidate was eligible."""

    index: int | None
    #: Store clock at the reservation, milliseconds; hand it back when settling.
    reserved_at_ms: int
    #: Decayed usage per unit of weight of the chosen target at decision time.
    score: float
    #: Which store made the reservation ("redis" or "local"); settle on the same one.
    backend: str = "local"
    #: Why nothing was chosen although some candidate was eligible: "broken" (every one
    #: is out of rotation), "tokens" or "requests" (some are over their budget, this
    #: limit holding back the first to free up); "" otherwise.
    blocked: str = ""
    #: With ``blocked``: store time (ms) when the first of them can take the request.
    retry_at_ms: int = 0
    #: The lease taken for an in-flight count (least-connections) or a budget
    #: reservation; hand it back when settling.
    lease_id: str = ""


class Settlement(msgspec.Struct, frozen=True):
    """The outcome of one request, as recorded against its target."""

    target_id: str
    reserved: float
    reserved_at_ms: int
    #: Counted units really used (0 when the request failed: the reservation is released).
    actual: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    failed: bool
    #: The ``backend`` of the selection this settles.
    backend: str = "local"
    #: The attempt's usage event for the aggregators (None: emission is off).
    event: UsageEvent | None = None
    #: This failure counts towards the circuit breaker's ``max_fails``.
    breaker_failure: bool = False
    #: ``balancer.max_fails`` (0: the breaker is off) and ``fail_timeout`` (ms).
    max_fails: int = 0
    fail_timeout_ms: int = 10_000
    #: An upstream 429's Retry-After in ms: the target is out of rotation that long.
    retry_after_ms: int = 0
    #: The selection's ``lease_id``: its in-flight lease is returned.
    lease_id: str = ""
    #: lowest-latency: this attempt's latency sample (ms, or ms per output token) for the
    #: target's decayed average; negative: none.
    latency: float = -1.0
    #: Budgets: the tokens the selection reserved under ``lease_id`` (negative: none), and
    #: the tokens really used (0 for a failed attempt, which still counts as a request).
    budget_reserved: int = -1
    budget_used: int = 0


class TargetTotals(msgspec.Struct):
    """Cumulative counters of one target since its balancer state was created."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    #: Current decayed usage (counted units, not divided by weight), reservations included.
    usage: float = 0.0
    #: Requests holding an in-flight lease (least-connections), fleet-wide.
    in_flight: int = 0
    #: lowest-latency: the decayed average latency (ms, or ms per output token); None
    #: before the first sample.
    latency: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageStore(Protocol):
    """Balancer state: one call to choose and reserve, one call to settle."""

    #: Human-readable kind for /status ("redis", "local", ...).
    kind: str

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        """Choose one eligible candidate and reserve its estimate, atomically."""
        ...

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        """Replace a reservation with actual usage and add to the totals."""
        ...

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        """Totals and current decayed usage of the given targets."""
        ...

    async def register(
        self,
        balancer_id: str,
        keys: BalancerKeys,
        targets: dict[str, str],
        balancer: dict[str, str] | None = None,
    ) -> None:
        """Make a balancer and its targets (id -> JSON description) findable by workers,
        with what the balancer itself is (``balancer``: its algorithm and counted
        quantity, which ``tokenlb stats`` reads to know what a share is of)."""
        ...

    async def retire(self, balancer_id: str, keys: BalancerKeys) -> None:
        """Forget a balancer whose plugin was deleted: unregister it and delete its state
        (usage, totals, events, rollups, ...). Idempotent."""
        ...

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        """The per-minute rollups of ``minutes`` (Unix seconds // 60) that exist."""
        ...

    async def healthy(self) -> bool:
        """Whether the store's backend answers now."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
