"""The aggregator worker: a small asyncio loop in the shape of arq's Worker.

Each pass, for every balancer a replica announced:
- read new events with XREADGROUP (and, every few seconds, take over entries another
  aggregator left pending for ``claim_idle_ms`` with XAUTOCLAIM: it died);
- add them to the per-minute rollups and XACK them in one Lua call
  (``lua/apply_events.lua``), so an event counts exactly once however many aggregators
  run and whenever one is killed;
- then, for the events that call applied, write Kong's log lines and export the spans;
- every few seconds: roll the decay epoch (``lua/roll_epoch.lua``), trim acknowledged
  entries from the streams, refresh the heartbeat.

``run()`` loops until SIGTERM/SIGINT; ``run_once()`` is one pass, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
)

from tokenlb_aggregator.settings import AggregatorSettings
from tokenlb_aggregator.sink import LogSink
from tokenlb_aggregator.spans import SpanEmitter
from tokenlb_proxy.events import EVENT_FIELD, UsageEvent, decode_event
from tokenlb_proxy.fleet import balancer_ids, target_descriptions
from tokenlb_proxy.keys import (
    AGGREGATORS_KEY,
    BalancerKeys,
    aggregator_heartbeat_key,
    balancer_keys,
)
from tokenlb_proxy.rollups import LATENCY_FIELD_PREFIX, latency_bucket
from tokenlb_proxy.scripts import LuaScript
from tokenlb_proxy.store.connect import RedisClient, connect_redis

__all__ = ["Aggregator", "AggregatorStats"]

log = logging.getLogger(__name__)

_Entry = tuple[str, dict[str, str]]

#: Errors that mean Redis (or part of a cluster) is unavailable for now: wait and retry.
_UNAVAILABLE = (
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    ClusterError,
    RedisClusterException,
    ReadOnlyError,
    OSError,
    # uvloop: redis-py writing to a connection a dead node closed (see the proxy's
    # store/resilient.py).
    RuntimeError,
)


@dataclass
class AggregatorStats:
    """Counters of this process, reported in its heartbeat."""

    applied: int = 0
    #: Entries another aggregator had already applied (taken over, then found done).
    skipped: int = 0
    malformed: int = 0
    started_at: float = field(default_factory=time.time)


@dataclass
class _Balancer:
    keys: BalancerKeys
    #: target id -> upstream URL, for the spans' server.address.
    urls: dict[str, str]


class Aggregator:
    """One aggregator process; several may run against the same Redis."""

    def __init__(
        self,
        settings: AggregatorSettings,
        *,
        sink: LogSink,
        spans: SpanEmitter | None,
        client: RedisClient | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or connect_redis(settings.redis_url, timeout_s=5.0)
        self.sink = sink
        self.spans = spans
        self.stats = AggregatorStats()
        self._apply_events = LuaScript(self.client, "apply_events")
        self._roll_epoch = LuaScript(self.client, "roll_epoch")
        self._balancers: dict[str, _Balancer] = {}
        self._due: dict[str, float] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the current pass, then exit ``run()``."""
        self._stopping.set()

    async def run(self) -> None:
        """Aggregate until stopped by ``stop()``, SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        log.info("aggregator %s started (group %s)", self.settings.name, self.settings.group)
        down_since: float | None = None
        try:
            while not self._stopping.is_set():
                try:
                    applied = await self.run_once()
                except _UNAVAILABLE as exc:
                    if down_since is None:  # one warning per outage, not one a second
                        down_since = time.monotonic()
                        log.warning(
                            "Redis is unavailable (%s: %s); retrying every second",
                            type(exc).__name__,
                            exc,
                        )
                    await self._sleep(1.0)
                    continue
                if down_since is not None:
                    log.warning(
                        "Redis is reachable again after %.1f s; aggregating",
                        time.monotonic() - down_since,
                    )
                    down_since = None
                if applied == 0:
                    await self._sleep(self.settings.idle_sleep_ms / 1000)
        finally:
            await self.close()

    async def run_once(self) -> int:
        """One pass over every stream; returns the number of events applied."""
        now = time.monotonic()
        if self._is_due("discover", now, self.settings.discover_interval_ms):
            await self._discover()
        claim = self._is_due("claim", now, self.settings.discover_interval_ms)
        applied = 0
        for balancer in list(self._balancers.values()):
            if claim:
                applied += await self._apply(balancer, await self._claim(balancer))
            applied += await self._apply(balancer, await self._read(balancer))
        if self._is_due("roll", now, self.settings.roll_interval_ms):
            await self.roll_epochs()
        if self._is_due("trim", now, self.settings.trim_interval_ms):
            await self._trim()
        if self._is_due("heartbeat", now, self.settings.heartbeat_interval_ms):
            await self._heartbeat()
        if applied:
            self.sink.flush()
        return applied

    async def roll_epochs(self) -> None:
        """Move every balancer's decay epoch forward (a no-op below one half-life)."""
        for balancer in self._balancers.values():
            keys = balancer.keys
            await self._roll_epoch(
                [keys.usage, keys.meta], [repr(self.settings.roll_min_half_lives)]
            )

    async def close(self) -> None:
        """Flush what is buffered, say goodbye in Redis, close the connection."""
        self.sink.close()
        if self.spans is not None:
            self.spans.close()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(AGGREGATORS_KEY, self.settings.name)
                pipe.delete(aggregator_heartbeat_key(self.settings.name))
                await pipe.execute()
        except _UNAVAILABLE:
            pass  # the heartbeat expires by itself
        await self.client.aclose()

    def _is_due(self, task: str, now: float, interval_ms: int) -> bool:
        if now < self._due.get(task, 0.0):
            return False
        self._due[task] = now + interval_ms / 1000
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _discover(self) -> None:
        """Find balancers (new ones get the consumer group, reading from their start)."""
        for balancer_id in await balancer_ids(self.client):
            keys = balancer_keys(balancer_id)
            if balancer_id not in self._balancers:
                await self._create_group(keys)
            descriptions = await target_descriptions(self.client, keys)
            self._balancers[balancer_id] = _Balancer(
                keys=keys,
                urls={t: str(d.get("url", "")) for t, d in descriptions.items()},
            )

    async def _create_group(self, keys: BalancerKeys) -> None:
        try:
            await self.client.xgroup_create(keys.events, self.settings.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, balancer: _Balancer) -> list[_Entry]:
        try:
            reply: Any = await self.client.xreadgroup(
                self.settings.group,
                self.settings.name,
                {balancer.keys.events: ">"},
                count=self.settings.batch_size,
            )
        except ResponseError as exc:
            # The stream and its group vanished (a Redis restarted without persistence,
            # a FLUSHALL); settling recreates the stream, so make the group again.
            if "NOGROUP" not in str(exc):
                raise
            await self._create_group(balancer.keys)
            return []
        return [entry for _, entries in reply or [] for entry in entries]

    async def _claim(self, balancer: _Balancer) -> list[_Entry]:
        """Entries a dead aggregator read but never acknowledged."""
        try:
            reply: Any = await self.client.xautoclaim(
                balancer.keys.events,
                self.settings.group,
                self.settings.name,
                min_idle_time=self.settings.claim_idle_ms,
                start_id="0-0",
                count=self.settings.batch_size,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._create_group(balancer.keys)
            return []
        entries: list[_Entry] = [e for e in reply[1] if e is not None and e[1] is not None]
        if entries:
            log.info("took over %d event(s) left pending by another aggregator", len(entries))
        return entries

    async def _apply(self, balancer: _Balancer, entries: list[_Entry]) -> int:
        if not entries:
            return 0
        keys = balancer.keys
        events: dict[str, UsageEvent] = {}
        rollup_keys: list[str] = []
        args: list[str | int] = []
        malformed: list[str] = []
        for entry_id, fields in entries:
            try:
                event = decode_event(fields[EVENT_FIELD])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                malformed.append(entry_id)
                continue
            events[entry_id] = event
            rollup = keys.rollup(int(event.end_ms // 60_000))
            if rollup not in rollup_keys:
                rollup_keys.append(rollup)
            args += [
                entry_id,
                rollup_keys.index(rollup) + 2,
                event.target,
                "1" if event.failed else "0",
                event.prompt_tokens,
                event.completion_tokens,
                repr(event.cost),
                f"{LATENCY_FIELD_PREFIX}{latency_bucket(event.upstream_ms)}",
            ]
        if malformed:
            # Not ours to interpret (an old or foreign writer): acknowledge, say so once.
            self.stats.malformed += len(malformed)
            log.warning("acknowledged %d malformed event(s) in %s", len(malformed), keys.events)
            await self.client.xack(keys.events, self.settings.group, *malformed)
        if not events:
            return 0
        applied: list[str] = await self._apply_events(
            [keys.events, *rollup_keys],
            [self.settings.group, self.settings.rollup_retention_s, len(events), *args],
        )
        self.stats.applied += len(applied)
        self.stats.skipped += len(events) - len(applied)
        for entry_id in applied:
            event = events[str(entry_id)]
            self.sink.write(event)
            if self.spans is not None:
                self.spans.emit(event, balancer.urls.get(event.target))
        return len(applied)

    async def _trim(self) -> None:
        """Delete entries every aggregator is done with: those before the oldest pending
        entry, or before the last delivered one when nothing is pending."""
        for balancer in self._balancers.values():
            stream = balancer.keys.events
            try:
                groups: list[dict[str, Any]] = await self.client.xinfo_groups(stream)
            except ResponseError:
                continue
            group = next((g for g in groups if g.get("name") == self.settings.group), None)
            if group is None:
                continue
            min_id = str(group.get("last-delivered-id", "0-0"))
            if int(group.get("pending", 0)):
                summary: Any = await self.client.xpending(stream, self.settings.group)
                if summary.get("min"):
                    min_id = str(summary["min"])
            if min_id != "0-0":
                await self.client.xtrim(stream, minid=min_id, approximate=False)

    async def _heartbeat(self) -> None:
        stats = self.stats
        beat = msgspec.json.encode(
            {
                "applied": stats.applied,
                "skipped": stats.skipped,
                "malformed": stats.malformed,
                "uptime_s": round(time.time() - stats.started_at, 1),
                "balancers": len(self._balancers),
            }
        )
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(
                aggregator_heartbeat_key(self.settings.name),
                beat,
                ex=self.settings.heartbeat_ttl_s,
            )
            now_ms = time.time() * 1000
            pipe.zadd(AGGREGATORS_KEY, {self.settings.name: now_ms})
            pipe.zremrangebyscore(
                AGGREGATORS_KEY, "-inf", now_ms - self.settings.heartbeat_ttl_s * 1000
            )
            await pipe.execute()
