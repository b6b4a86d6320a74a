"""Every Redis key tokenlb uses, built in one place.

All keys of one balancer (one ``ai-proxy-advanced`` plugin instance) share the hash tag
``{<balancer id>}``, so each Lua script touches a single Redis Cluster slot and different
balancers spread over shards.
"""

from __future__ import annotations

import re

import msgspec

__all__ = [
    "AGGREGATORS_KEY",
    "AGGREGATOR_GROUP",
    "BALANCERS_KEY",
    "CONFIG_CHANNEL",
    "CONFIG_KEY",
    "KEY_PREFIX",
    "BalancerKeys",
    "aggregator_heartbeat_key",
    "balancer_keys",
]

KEY_PREFIX = "tokenlb"
#: Set of every balancer id a replica has served (so workers find the per-balancer keys
#: without SCAN). Fleet-wide, outside any balancer's slot.
BALANCERS_KEY = f"{KEY_PREFIX}:balancers"
#: Hash with the fleet's config: ``version`` (1, 2, ...) and ``document`` (the flat
#: kong.yaml as JSON; see control/redis_repository.py). One key, so one slot on a cluster.
CONFIG_KEY = f"{KEY_PREFIX}:config"
#: Pub/sub channel announcing each new config version (the message is the version).
CONFIG_CHANNEL = f"{KEY_PREFIX}:config:changed"
#: Sorted set of aggregator names scored by their last heartbeat (ms).
AGGREGATORS_KEY = f"{KEY_PREFIX}:aggregators"
#: The consumer group every aggregator reads the event streams with.
AGGREGATOR_GROUP = "tokenlb-aggregators"
# Braces would break the hash tag; anything outside this set is replaced.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@/-]")


class BalancerKeys(msgspec.Struct, frozen=True):
    """The keys of one balancer."""

    #: Sorted set, target id -> forward-decayed usage (see lua/select_target.lua).
    usage: str
    #: Hash with the decay epoch and half-life (written by the scripts), and the
    #: algorithm and tokens_count_strategy (written when a replica announces the balancer).
    meta: str
    #: Hash, target id -> smooth round-robin current weight.
    round_robin: str
    #: Hash, "<target id>:<field>" -> cumulative request/token/cost counters.
    totals: str
    #: Stream of usage events (one per upstream attempt), read by the aggregators.
    events: str
    #: Hash, target id -> JSON description (model, provider, weight) for `tokenlb stats`.
    targets: str
    #: Prefix of the per-minute rollup hashes: ``<rollup_prefix><unix minute>``.
    rollup_prefix: str
    #: Hash, circuit breaker state per target: "<target id>:until" (out of rotation until,
    #: ms), "<target id>:fails" and "<target id>:since" (failures in the current window).
    breaker: str
    #: Sorted set of in-flight leases (least-connections): "<target id>|<lease id>" ->
    #: expiry (ms).
    leases: str
    #: Hash, target id -> number of unexpired in-flight leases.
    in_flight: str
    #: Hash, lowest-latency state per target: "<target id>:avg", ":n", ":at", ":probe".
    latency: str
    #: Hash, target id -> tokens reserved or used in its budget window (limits extension).
    budget: str
    #: Prefix of the per-target budget windows: sorted sets "<lease id>|<tokens>" -> time
    #: (ms) of the reservation, the last minute of them.
    budget_prefix: str
    #: SCAN pattern that matches every key above (the hash tag is glob-safe: ``_UNSAFE``
    #: replaces ``*``, ``?`` and brackets), to delete a retired balancer's state.
    pattern: str

    def budget_window(self, target_id: str) -> str:
        """The budget window of ``target_id`` (a key under the balancer's hash tag)."""
        return f"{self.budget_prefix}{target_id}"

    def rollup(self, minute: int) -> str:
        """The rollup hash of the minute starting at ``minute * 60`` (Unix seconds)."""
        return f"{self.rollup_prefix}{minute}"


def balancer_keys(balancer_id: str) -> BalancerKeys:
    """Keys for the balancer ``balancer_id`` (a plugin id or a name derived from its scope)."""
    tag = "{" + _UNSAFE.sub("_", balancer_id) + "}"
    base = f"{KEY_PREFIX}:{tag}"
    return BalancerKeys(
        usage=f"{base}:usage",
        meta=f"{base}:meta",
        round_robin=f"{base}:rr",
        totals=f"{base}:totals",
        events=f"{base}:events",
        targets=f"{base}:targets",
        rollup_prefix=f"{base}:rollup:",
        breaker=f"{base}:breaker",
        leases=f"{base}:leases",
        in_flight=f"{base}:inflight",
        latency=f"{base}:latency",
        budget=f"{base}:budget",
        budget_prefix=f"{base}:budget:",
        pattern=f"{base}:*",
    )


def aggregator_heartbeat_key(name: str) -> str:
    """The key an aggregator refreshes with a TTL while it is alive."""
    return f"{KEY_PREFIX}:aggregator:{name}"
