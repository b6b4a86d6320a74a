"""``tokenlb stats``: read the fleet's rollups from Redis, no config file needed."""

from __future__ import annotations

import sys

import msgspec
from rich.console import Console

from tokenlb_proxy.fleet import balancer_ids, target_descriptions
from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.stats import balancer_stats, render_stats, window_minutes
from tokenlb_proxy.store.redis import RedisStore, connect_redis

__all__ = ["collect_stats", "print_stats"]

DEFAULT_HALF_LIFE_MS = 60_000


async def collect_stats(redis_url: str, minutes: int) -> list[dict[str, object]]:
    """Stats of every balancer the replicas announced, over the last ``minutes``."""
    store = RedisStore(connect_redis(redis_url, timeout_s=5.0))
    try:
        window = window_minutes(minutes)
        result = []
        for balancer_id in await balancer_ids(store.client):
            keys = balancer_keys(balancer_id)
            half_life = await store.client.hget(keys.meta, "half_life_ms")
            result.append(
                await balancer_stats(
                    store,
                    balancer_id,
                    keys,
                    int(half_life) if half_life else DEFAULT_HALF_LIFE_MS,
                    await target_descriptions(store.client, keys),
                    window,
                )
            )
        return result
    finally:
        await store.close()


async def print_stats(
    redis_url: str, minutes: int, *, as_json: bool, per_minute: bool = False
) -> int:
    balancers = await collect_stats(redis_url, minutes)
    if as_json:
        sys.stdout.write(msgspec.json.encode({"balancers": balancers}).decode() + "\n")
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
