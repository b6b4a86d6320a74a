"""``tokenlb stats``: read the fleet's rollups from Redis, no config file needed.

The window's counters (requests, tokens, cost, latency, shares) are the aggregators'
rollups. With no aggregator running they stop where the last one stopped, which reads
as a table of zeros on a fleet that is busy: so ``tokenlb stats`` first says on stderr,
on one line, that none is running and how to start one. It still prints the table (and
exits 0): ``usage now`` comes from the balancer state and is right without an
aggregator, and the minutes rolled up before one stopped are still true. ``--json``
carries the same fact as ``aggregators.alive == []``.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
from rich.console import Console

from tokenlb_proxy.fleet import aggregator_health, balancer_ids, target_descriptions
from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.settings import redact_url
from tokenlb_proxy.stats import balancer_stats, render_stats, window_minutes
from tokenlb_proxy.store.redis import RedisStore, connect_redis

__all__ = ["collect_stats", "no_aggregator_notice", "print_stats"]

DEFAULT_HALF_LIFE_MS = 60_000


async def collect_stats(redis_url: str, minutes: int) -> dict[str, Any]:
    """Stats of every balancer the replicas announced, over the last ``minutes``, and
    which aggregators are alive (the shape of ``GET /stats``)."""
    store = RedisStore(connect_redis(redis_url, timeout_s=5.0))
    try:
        window = window_minutes(minutes)
        balancers = []
        for balancer_id in await balancer_ids(store.client):
            keys = balancer_keys(balancer_id)
            meta = await store.client.hmget(
                keys.meta, ["half_life_ms", "algorithm", "tokens_count_strategy"]
            )
            half_life, algorithm, strategy = (None if v is None else str(v) for v in meta)
            balancers.append(
                await balancer_stats(
                    store,
                    balancer_id,
                    keys,
                    int(half_life) if half_life else DEFAULT_HALF_LIFE_MS,
                    await target_descriptions(store.client, keys),
                    window,
                    algorithm=algorithm,
                    tokens_count_strategy=strategy,
                )
            )
        aggregators = await aggregator_health(
            store.client, [balancer_keys(b["id"]) for b in balancers]
        )
        return {"aggregators": aggregators, "balancers": balancers}
    finally:
        await store.close()


def no_aggregator_notice(redis_url: str, aggregators: dict[str, Any]) -> str | None:
    """The line that says no aggregator is running, and how to start one; None when one
    is. Counts the usage events waiting for it, so the operator sees what is missing."""
    if aggregators["alive"]:
        return None
    waiting = sum(
        stream["lag"] if stream["lag"] is not None else stream["length"]
        for stream in aggregators["streams"].values()
    )
    return (
        "no aggregator is running on this Redis, so the window's counters (requests, "
        "tokens, cost, latency, shares) stop where the last one stopped "
        f"({waiting} usage events are waiting); start one with: "
        f"tokenlb aggregator --redis-url {redact_url(redis_url)}"
    )


async def print_stats(
    redis_url: str, minutes: int, *, as_json: bool, per_minute: bool = False
) -> int:
    stats = await collect_stats(redis_url, minutes)
    balancers = stats["balancers"]
    notice = no_aggregator_notice(redis_url, stats["aggregators"]) if balancers else None
    if notice is not None:
        print(f"tokenlb stats: {notice}", file=sys.stderr, flush=True)
    if as_json:
        sys.stdout.write(msgspec.json.encode(stats).decode() + "\n")
    elif not balancers:
        print("no balancer has reported to this Redis yet")
    else:
        console = Console()
        # Eleven columns: when not on a terminal, do not squeeze them into 80.
        render_stats(
            console if console.is_terminal else Console(width=160),
            balancers,
            per_minute=per_minute,
        )
    return 0
