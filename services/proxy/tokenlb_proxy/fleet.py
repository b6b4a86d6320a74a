"""What the fleet looks like from Redis: balancers, targets, aggregators and their lag.

Shared by the admin port (``/status``, ``/stats``), ``tokenlb stats`` and the aggregator,
so every view reads the same keys the same way. Every command names one key (or pipelines
single-key commands), so all of it works on a Redis Cluster.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from tokenlb_proxy.keys import (
    AGGREGATOR_GROUP,
    AGGREGATORS_KEY,
    BALANCERS_KEY,
    BalancerKeys,
    aggregator_heartbeat_key,
)
from tokenlb_proxy.store.connect import RedisClient

__all__ = ["aggregator_health", "balancer_ids", "stream_backlog", "target_descriptions"]

_decoder = msgspec.json.Decoder(dict[str, Any])


async def balancer_ids(client: RedisClient) -> list[str]:
    """Every balancer a replica has announced."""
    members = await client.smembers(BALANCERS_KEY)
    return sorted(str(m) for m in members)


async def target_descriptions(client: RedisClient, keys: BalancerKeys) -> dict[str, Any]:
    """target id -> description (model, weight, url, index) as the replicas announced it."""
    raw = await client.hgetall(keys.targets)
    return {str(target_id): _decoder.decode(value) for target_id, value in raw.items()}


async def stream_backlog(client: RedisClient, keys: BalancerKeys) -> dict[str, int | None]:
    """Events not yet read by the aggregators (``lag``) and read but unacknowledged
    (``pending``); ``lag`` is None when no aggregator group exists yet."""
    try:
        groups: list[dict[str, Any]] = await client.xinfo_groups(keys.events)
    except ResponseError:  # no such stream: nothing was ever emitted
        return {"length": 0, "lag": None, "pending": 0}
    length = int(await client.xlen(keys.events))
    for group in groups:
        if group.get("name") == AGGREGATOR_GROUP:
            lag = group.get("lag")
            return {
                "length": length,
                "lag": int(lag) if lag is not None else None,
                "pending": int(group.get("pending", 0)),
            }
    return {"length": length, "lag": None, "pending": 0}


async def aggregator_health(
    client: RedisClient, balancers: list[BalancerKeys], fresh_s: float = 10.0
) -> dict[str, Any]:
    """Which aggregators sent a heartbeat lately, and the event backlog per balancer."""
    now_ms = time.time() * 1000
    names = [
        str(n) for n in await client.zrangebyscore(AGGREGATORS_KEY, now_ms - fresh_s * 1000, "+inf")
    ]
    alive = []
    if names:
        # One GET per key, pipelined: heartbeat keys live on different cluster slots,
        # where a single MGET would be refused (CROSSSLOT).
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(aggregator_heartbeat_key(name))
            beats: list[str | None] = await pipe.execute()
        alive = [
            {"name": name, **_decoder.decode(beat)}
            for name, beat in zip(names, beats, strict=True)
            if beat is not None
        ]
    backlog = {keys.events: await stream_backlog(client, keys) for keys in balancers}
    lag = sum(b["lag"] or 0 for b in backlog.values())
    pending = sum(b["pending"] or 0 for b in backlog.values())
    return {"alive": alive, "lag": lag, "pending": pending, "streams": backlog}
