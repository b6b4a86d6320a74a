"""consistent-hashing: the same header value maps to the same target on every replica.

A key (the ``hash_on_header`` value) falls into one of ``slots`` buckets (``balancer.slots``,
Kong's default 10000) by a 64-bit BLAKE2b hash. Each bucket ranks every target by weighted
rendezvous hashing: target t scores ``weight_t / -ln(u)`` where ``u`` in (0, 1) is the hash
of the bucket and t's id, and the highest score comes first. So:

- every replica that loads the same config computes the same ranking, with no shared
  state (target ids are stable across harmless config edits, see ``config.compile``);
- a target is first for a share of the buckets equal to its share of the total weight;
- adding or removing a target moves only the keys it takes or held; the others stay put;
- the rest of a bucket's ranking is its failover order: when the first target is out of
  rotation, already tried or not allowed for the request, the next one takes over, the
  same on every replica.

This plays the role of Kong's hash ring (``slots`` points walked clockwise) with exact
weight shares and minimal movement when targets change.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

__all__ = ["ConsistentHash"]

_SCALE = 2.0**64


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class ConsistentHash:
    """``order(key)``: the targets (indexes in config order) in the order ``key`` tries them."""

    def __init__(self, targets: Sequence[tuple[str, int]], slots: int) -> None:
        """``targets``: (target id, weight) in config order; ``slots``: number of buckets."""
        if not targets or slots < 1:
            raise ValueError("need at least one target and one slot")
        self.slots = slots
        self._targets = tuple(targets)
        self._orders: dict[int, tuple[int, ...]] = {}

    def bucket(self, key: str) -> int:
        """The bucket (0 <= bucket < slots) ``key`` falls into."""
        return _hash64(key) % self.slots

    def order(self, key: str) -> tuple[int, ...]:
        """Indexes of every target, in the order ``key`` tries them."""
        bucket = self.bucket(key)
        order = self._orders.get(bucket)
        if order is None:
            order = self._orders[bucket] = self._rank(bucket)
        return order

    def _rank(self, bucket: int) -> tuple[int, ...]:
        scores = []
        for index, (target_id, weight) in enumerate(self._targets):
            u = (_hash64(f"{bucket}|{target_id}") + 0.5) / _SCALE
            scores.append((weight / -math.log(u), -index))
        ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        return tuple(ranked)
