"""Per-target, per-minute rollups: what `tokenlb stats` and ``GET /stats`` show.

The aggregator adds each usage event to the hash of the minute the request ended in
(``lua/apply_events.lua``); the embedded store keeps the same buckets in memory. Latency
goes into a log-scale histogram (8 buckets per doubling, so a percentile read from it is
within ~9% of the true value) instead of a list of samples, so a bucket stays small.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec

__all__ = [
    "LATENCY_FIELD_PREFIX",
    "MinuteRollup",
    "TargetRollup",
    "latency_bucket",
    "merge_rollups",
    "parse_rollup_hash",
]

BUCKETS_PER_DOUBLING = 8
LATENCY_FIELD_PREFIX = "lat:"
_COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens")


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of ``latency_ms``: the smallest b with 2^(b/8) >= latency."""
    return max(0, math.ceil(BUCKETS_PER_DOUBLING * math.log2(max(latency_ms, 1.0))))


def bucket_upper_ms(bucket: int) -> float:
    return float(2 ** (bucket / BUCKETS_PER_DOUBLING))


class TargetRollup(msgspec.Struct):
    """Counters of one target over some minutes."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    #: latency bucket -> requests
    latency: dict[int, int] = msgspec.field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_request(
        self,
        *,
        failed: bool,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        latency_ms: float,
    ) -> None:
        self.requests += 1
        self.errors += int(failed)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost
        bucket = latency_bucket(latency_ms)
        self.latency[bucket] = self.latency.get(bucket, 0) + 1

    def merge(self, other: TargetRollup) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        for bucket, count in other.latency.items():
            self.latency[bucket] = self.latency.get(bucket, 0) + count

    def latency_percentile(self, quantile: float) -> float | None:
        """Upper bound of the bucket holding the ``quantile`` request, in ms."""
        total = sum(self.latency.values())
        if total == 0:
            return None
        rank = quantile * total
        seen = 0
        for bucket in sorted(self.latency):
            seen += self.latency[bucket]
            if seen >= rank:
                return bucket_upper_ms(bucket)
        return bucket_upper_ms(max(self.latency))

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost": self.cost,
            "latency_p50_ms": self.latency_percentile(0.50),
            "latency_p95_ms": self.latency_percentile(0.95),
        }


class MinuteRollup(msgspec.Struct):
    """Every target's counters in one minute (``minute`` = Unix seconds // 60)."""

    minute: int
    targets: dict[str, TargetRollup] = msgspec.field(default_factory=dict)


def parse_rollup_hash(fields: Mapping[str, str]) -> dict[str, TargetRollup]:
    """A rollup hash (``<target>:<field>`` -> value) as per-target counters."""
    targets: dict[str, TargetRollup] = {}
    for name, value in fields.items():
        target_id, _, field = name.partition(":")
        rollup = targets.setdefault(target_id, TargetRollup())
        if field in _COUNTERS:
            setattr(rollup, field, int(value))
        elif field == "cost":
            rollup.cost = float(value)
        elif field.startswith(LATENCY_FIELD_PREFIX):
            rollup.latency[int(field[len(LATENCY_FIELD_PREFIX) :])] = int(value)
    return targets


def merge_rollups(minutes: Iterable[MinuteRollup]) -> dict[str, TargetRollup]:
    """Totals per target over ``minutes``."""
    totals: dict[str, TargetRollup] = {}
    for minute in minutes:
        for target_id, rollup in minute.targets.items():
            totals.setdefault(target_id, TargetRollup()).merge(rollup)
    return totals
