"""Fleet-wide balancer state in Redis: one EVALSHA to choose, one to settle.

Works the same on one server, a Redis Cluster or a Sentinel-watched master (see
``store/connect.py``): every key a call touches carries the balancer's hash tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from tokenlb_proxy.events import EVENT_FIELD, UsageEvent, encode_event
from tokenlb_proxy.keys import BALANCERS_KEY, BalancerKeys
from tokenlb_proxy.redis_outage import is_outage
from tokenlb_proxy.rollups import MinuteRollup, parse_rollup_hash
from tokenlb_proxy.scripts import LuaScript
from tokenlb_proxy.store.base import (
    DEFAULT_ROLL_AFTER,
    DEFAULT_STREAM_MAX_LEN,
    Algorithm,
    Candidate,
    Selection,
    Settlement,
    TargetTotals,
)
from tokenlb_proxy.store.connect import RedisClient, connect_redis

__all__ = ["RedisStore", "connect_redis"]

#: Keys per UNLINK when a balancer is retired.
_DELETE_BATCH = 500


class RedisStore:
    """Balancer state shared by every replica that points at the same Redis."""

    kind = "redis"

    def __init__(
        self,
        client: RedisClient,
        roll_after: float = DEFAULT_ROLL_AFTER,
        stream_max_len: int = DEFAULT_STREAM_MAX_LEN,
        emit_events: bool = True,
    ) -> None:
        self.client = client
        #: Append usage events for the aggregators (off: settle only, one XADD less).
        self.emit_events = emit_events
        self._roll_after = str(roll_after)
        self._stream_max_len = str(stream_max_len)
        self._select_target = LuaScript(client, "select_target")
        self._record_usage = LuaScript(client, "record_usage")

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        budgets = any(c.tokens_per_minute or c.requests_per_minute for c in candidates)
        ranked = any(c.tier for c in candidates)
        leased = algorithm == "least-connections"
        args: list[str | int | float] = [algorithm, half_life_ms, self._roll_after]
        args += [len(candidates), "1" if ranked else "0", "1" if budgets else "0"]
        for c in candidates:
            args += [c.target_id, c.weight, repr(c.estimate), "1" if c.eligible else "0"]
            if ranked:
                args.append(c.tier)
            if leased:
                args.append(c.lease_ms)
            if budgets:
                args += [c.tokens, c.tokens_per_minute, c.requests_per_minute]
        select_keys = [
            keys.usage,
            keys.meta,
            keys.round_robin,
            keys.breaker,
            keys.leases,
            keys.in_flight,
            keys.latency,
            keys.budget,
        ]
        if budgets:
            select_keys += [keys.budget_window(c.target_id) for c in candidates]
        reply = await self._select_target(select_keys, args)
        index = int(reply[0])
        return Selection(
            index=index - 1 if index > 0 else None,
            reserved_at_ms=int(reply[1]),
            score=float(reply[2]),
            backend=self.kind,
            blocked=str(reply[3]),
            retry_at_ms=int(reply[4]),
            lease_id=str(reply[5]),
        )

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        event = settlement.event
        await self._record_usage(
            [
                keys.usage,
                keys.meta,
                keys.totals,
                keys.events,
                keys.breaker,
                keys.leases,
                keys.in_flight,
                keys.latency,
                keys.budget,
                keys.budget_window(settlement.target_id),
            ],
            [
                settlement.target_id,
                half_life_ms,
                repr(settlement.reserved),
                settlement.reserved_at_ms,
                repr(settlement.actual),
                settlement.prompt_tokens,
                settlement.completion_tokens,
                repr(settlement.cost),
                "1" if settlement.failed else "0",
                self._roll_after,
                encode_event(event) if event is not None and self.emit_events else "",
                self._stream_max_len,
                "1" if settlement.breaker_failure else "0",
                settlement.max_fails,
                settlement.fail_timeout_ms,
                settlement.retry_after_ms,
                settlement.lease_id,
                repr(settlement.latency),
                settlement.budget_reserved,
                settlement.budget_used,
            ],
        )

    async def append_events(self, entries: Sequence[tuple[BalancerKeys, UsageEvent]]) -> None:
        """Append events whose settle could not (Redis was down), as ``record_usage.lua``
        would have: same field, same length cap. One pipelined round trip, one key a
        command, so it works on a cluster too."""
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, event in entries:
                pipe.xadd(
                    keys.events,
                    {EVENT_FIELD: encode_event(event)},
                    maxlen=int(self._stream_max_len),
                    approximate=True,
                )
            await pipe.execute()

    async def register(
        self,
        balancer_id: str,
        keys: BalancerKeys,
        targets: dict[str, str],
        balancer: dict[str, str] | None = None,
    ) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(BALANCERS_KEY, balancer_id)
            if targets:
                pipe.hset(keys.targets, mapping=cast(Any, targets))
            if balancer:
                pipe.hset(keys.meta, mapping=cast(Any, balancer))
            await pipe.execute()

    async def retire(self, balancer_id: str, keys: BalancerKeys) -> None:
        # Unregister first: an aggregator that no longer finds the balancer stops reading
        # its stream. SCAN is fine here: plugins are deleted rarely, never on a request.
        await self.client.srem(BALANCERS_KEY, balancer_id)
        found = [key async for key in self.client.scan_iter(match=keys.pattern, count=1000)]
        for start in range(0, len(found), _DELETE_BATCH):
            # One hash tag: every batch is a single-slot command on a cluster too.
            await self.client.unlink(*found[start : start + _DELETE_BATCH])

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        async with self.client.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(keys.rollup(minute))
            replies: list[dict[str, str]] = await pipe.execute()
        return [
            MinuteRollup(minute=minute, targets=parse_rollup_hash(fields))
            for minute, fields in zip(minutes, replies, strict=True)
            if fields
        ]

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        if not target_ids:
            return {}
        # One transaction (all keys share the balancer's slot): scores and the epoch they
        # are relative to must come from the same instant. TIME has no key, so on a
        # cluster it cannot join the transaction; a moment later is close enough.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.totals)
            pipe.zmscore(keys.usage, list(target_ids))
            pipe.hget(keys.meta, "epoch_ms")
            pipe.hmget(keys.in_flight, list(target_ids))
            pipe.hmget(keys.latency, [f"{target_id}:avg" for target_id in target_ids])
            counters, scores, epoch_ms, in_flight, latency = await pipe.execute()
        server_time = await self.client.time()
        now_ms = int(server_time[0]) * 1000 + int(server_time[1]) // 1000
        decay = 2.0 ** (-(now_ms - int(epoch_ms)) / half_life_ms) if epoch_ms else 0.0
        rows = zip(target_ids, scores, in_flight, latency, strict=True)
        return {
            target_id: _totals_from_hash(
                counters,
                target_id,
                (score or 0.0) * decay,
                int(leases or 0),
                float(average) if average is not None else None,
            )
            for target_id, score, leases, average in rows
        }

    async def ping(self) -> None:
        """Raise unless Redis answers now."""
        await self.client.ping()

    async def healthy(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception as exc:
            if not is_outage(exc):
                raise
            return False

    async def close(self) -> None:
        await self.client.aclose()


def _totals_from_hash(
    counters: dict[str, Any],
    target_id: str,
    usage: float,
    in_flight: int,
    latency: float | None,
) -> TargetTotals:
    def field(name: str) -> str:
        value = counters.get(f"{target_id}:{name}", "0")
        return str(value)

    return TargetTotals(
        requests=int(field("requests")),
        errors=int(field("errors")),
        prompt_tokens=int(field("prompt_tokens")),
        completion_tokens=int(field("completion_tokens")),
        cost=float(field("cost")),
        usage=usage,
        in_flight=in_flight,
        latency=latency,
    )
