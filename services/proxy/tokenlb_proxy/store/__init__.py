"""Usage stores: where balancer state lives.

``RedisStore`` shares it across the fleet through atomic Lua scripts; ``LocalStore`` keeps
it in this process with the same semantics (the embedded default); ``ResilientStore`` uses
Redis and falls back to a local store while Redis is unreachable.
"""

from tokenlb_proxy.store.base import (
    Candidate,
    Selection,
    Settlement,
    TargetTotals,
    UsageStore,
)
from tokenlb_proxy.store.local import LocalStore
from tokenlb_proxy.store.redis import RedisStore
from tokenlb_proxy.store.resilient import ResilientStore

__all__ = [
    "Candidate",
    "LocalStore",
    "RedisStore",
    "ResilientStore",
    "Selection",
    "Settlement",
    "TargetTotals",
    "UsageStore",
]
