"""Every Redis key tokenlb uses, built in one place.

All keys of one balancer (one ``ai-proxy-advanced`` plugin instance) share the hash tag
``{<balancer id>}``, so each Lua script touches a single Redis Cluster slot and different
balancers spread over shards.
"""

from __future__ import annotations

import re

import msgspec

__all__ = ["KEY_PREFIX", "BalancerKeys", "balancer_keys"]

KEY_PREFIX = "tokenlb"
# Braces would break the hash tag; anything outside this set is replaced.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@/-]")


class BalancerKeys(msgspec.Struct, frozen=True):
    """The keys of one balancer."""

    #: Sorted set, target id -> forward-decayed usage (see lua/select_lowest_usage.lua).
    usage: str
    #: Hash with the decay epoch.
    meta: str
    #: Hash, target id -> smooth round-robin current weight.
    round_robin: str
    #: Hash, "<target id>:<field>" -> cumulative request/token/cost counters.
    totals: str


def balancer_keys(balancer_id: str) -> BalancerKeys:
    """Keys for the balancer ``balancer_id`` (a plugin id or a name derived from its scope)."""
    tag = "{" + _UNSAFE.sub("_", balancer_id) + "}"
    base = f"{KEY_PREFIX}:{tag}"
    return BalancerKeys(
        usage=f"{base}:usage",
        meta=f"{base}:meta",
        round_robin=f"{base}:rr",
        totals=f"{base}:totals",
    )
