"""Redis first, the local store while Redis is unreachable.

A replica must keep serving when Redis goes away: it balances on its own counters
(what Kong does all the time), reports itself degraded, and logs one warning per outage.

- The first Redis error (refused, reset, timed out, loading, out of memory, read-only
  replica, cluster down: see redis_outage.py) marks the store down. From then on no request
  touches Redis: they all use the local store at once, so a dead or hung Redis costs a
  request at most the one timed-out call that revealed it (the client's socket timeout).
- While down, one background probe pings Redis every ``retry_interval_s``. When it
  answers, the probe deletes the state of balancers retired during the outage, announces
  this replica's balancers again (a Redis that restarted empty has forgotten them, and
  aggregators find streams only through them), then the store rejoins: the next
  selection goes through Redis.
- Reservations are settled on the store that made them. A Redis reservation made before
  an outage is settled without releasing it: if Redis lost its data the reservation is
  gone (releasing it would subtract what was never there), and if Redis kept it, it
  decays away like a crashed replica's.
- The usage events of attempts settled locally are kept (up to ``backlog_limit``, the
  oldest dropped first) and appended to Redis when it is back, marked ``degraded`` when
  the local counters chose the target, so the aggregators' rollups, Kong log lines and
  traces include the outage. They arrive late but carry their real times. An append
  interrupted by a new failure is retried whole, so those few may count twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence

import msgspec

from tokenlb_proxy.events import UsageEvent
from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.redis_outage import is_outage
from tokenlb_proxy.rollups import MinuteRollup
from tokenlb_proxy.store.base import Algorithm, Candidate, Selection, Settlement, TargetTotals
from tokenlb_proxy.store.local import LocalStore
from tokenlb_proxy.store.redis import RedisStore

__all__ = ["ResilientStore"]

log = logging.getLogger(__name__)

#: Events kept while Redis is away (~400 bytes each), and appended per round trip after.
DEFAULT_BACKLOG_LIMIT = 20_000
_APPEND_BATCH = 500


class ResilientStore:
    """A ``RedisStore`` with a ``LocalStore`` to fall back on."""

    kind = "redis"

    def __init__(
        self,
        primary: RedisStore,
        fallback: LocalStore,
        retry_interval_s: float = 1.0,
        backlog_limit: int = DEFAULT_BACKLOG_LIMIT,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._retry_interval_s = retry_interval_s
        #: Usage events settled locally, not yet in Redis; one appender at a time.
        self._backlog: deque[tuple[BalancerKeys, UsageEvent]] = deque(maxlen=backlog_limit)
        self._appending = asyncio.Lock()
        #: Events dropped because the backlog was full (reported when Redis returns).
        self.dropped_events = 0
        #: ``time.monotonic()`` when the current outage began; None while Redis answers.
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        #: What ``register`` was told, replayed to Redis when it returns.
        self._registrations: dict[
            str, tuple[BalancerKeys, dict[str, str], dict[str, str] | None]
        ] = {}
        #: Balancers retired while Redis was away, deleted there when it returns.
        self._retirements: dict[str, BalancerKeys] = {}
        #: Latest Redis server time a selection returned (ms), and the value it had when
        #: the last outage ended: Redis reservations up to then predate that outage.
        self._last_redis_ms = 0
        self._orphaned_up_to_ms = 0
        #: Outages seen since start (for /status and tests).
        self.outages = 0

    @property
    def degraded(self) -> bool:
        """True while Redis is considered unreachable."""
        return self._down_since is not None

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.outages += 1
        log.warning(
            "Redis is unreachable (%s: %s); balancing on this replica's local counters "
            "until it returns",
            type(exc).__name__,
            exc,
        )
        self._probe = asyncio.create_task(self._probe_until_up(), name="tokenlb-redis-probe")

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval_s)
            try:
                await self.primary.ping()
                for balancer_id, keys in list(self._retirements.items()):
                    await self.primary.retire(balancer_id, keys)
                    self._retirements.pop(balancer_id, None)
                for balancer_id, (keys, targets, about) in list(self._registrations.items()):
                    await self.primary.register(balancer_id, keys, targets, about)
                appended = await self._append_backlog()
            except Exception as exc:  # a bug must not leave the replica degraded for good
                if not is_outage(exc):
                    log.exception("probing Redis failed unexpectedly; probing again")
                continue
            self._mark_up(appended)
            return

    def _mark_up(self, appended: int) -> None:
        down_for = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        self._probe = None
        self._orphaned_up_to_ms = self._last_redis_ms
        dropped = f", {self.dropped_events} dropped" if self.dropped_events else ""
        self.dropped_events = 0
        log.warning(
            "Redis is reachable again after %.1f s; rejoined the fleet-wide balancer "
            "(%d usage events from the outage appended%s)",
            down_for,
            appended,
            dropped,
        )

    async def _settle_locally(
        self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement
    ) -> None:
        """Settle on the local store, and keep the event for Redis."""
        await self.fallback.settle(keys, half_life_ms, settlement)
        event = settlement.event
        if event is None or not self.primary.emit_events:
            return
        if len(self._backlog) == self._backlog.maxlen:
            self.dropped_events += 1
        degraded = settlement.backend == self.fallback.kind
        self._backlog.append((keys, msgspec.structs.replace(event, degraded=degraded)))
        if not self.degraded:  # a request chosen locally that finished after the rejoin
            try:
                await self._append_backlog()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._mark_down(exc)

    async def _append_backlog(self) -> int:
        """Append what the backlog holds to Redis; returns how many were appended."""
        appended = 0
        async with self._appending:
            while self._backlog:
                size = min(_APPEND_BATCH, len(self._backlog))
                batch = [self._backlog.popleft() for _ in range(size)]
                try:
                    await self.primary.append_events(batch)
                except BaseException:
                    self._backlog.extendleft(reversed(batch))  # retried whole next time
                    raise
                appended += len(batch)
        return appended

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        if not self.degraded:
            try:
                selection = await self.primary.select(keys, algorithm, half_life_ms, candidates)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._mark_down(exc)
            else:
                self._last_redis_ms = max(self._last_redis_ms, selection.reserved_at_ms)
                return selection
        return await self.fallback.select(keys, algorithm, half_life_ms, candidates)

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        if settlement.backend == self.fallback.kind:
            await self._settle_locally(keys, half_life_ms, settlement)
            return
        if settlement.reserved and settlement.reserved_at_ms <= self._orphaned_up_to_ms:
            settlement = msgspec.structs.replace(settlement, reserved=0.0)
        if not self.degraded:
            try:
                await self.primary.settle(keys, half_life_ms, settlement)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._mark_down(exc)
            else:
                return
        # The Redis reservation is out of reach; the usage still counts locally.
        unreserved = msgspec.structs.replace(settlement, reserved=0.0)
        await self._settle_locally(keys, half_life_ms, unreserved)

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        if not self.degraded:
            try:
                return await self.primary.totals(keys, half_life_ms, target_ids)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._mark_down(exc)
        return await self.fallback.totals(keys, half_life_ms, target_ids)

    async def register(
        self,
        balancer_id: str,
        keys: BalancerKeys,
        targets: dict[str, str],
        balancer: dict[str, str] | None = None,
    ) -> None:
        self._registrations[balancer_id] = (keys, targets, balancer)
        self._retirements.pop(balancer_id, None)
        await self.fallback.register(balancer_id, keys, targets, balancer)
        if self.degraded:
            return  # the probe announces it when Redis is back
        try:
            await self.primary.register(balancer_id, keys, targets, balancer)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._mark_down(exc)

    def keep_only(self, balancer_ids: set[str]) -> None:
        """Forget the registrations of balancers this replica no longer serves (another
        replica removed them and deleted their state), so that a Redis coming back from
        an outage is not told of them again."""
        for balancer_id in set(self._registrations) - balancer_ids:
            del self._registrations[balancer_id]

    async def retire(self, balancer_id: str, keys: BalancerKeys) -> None:
        self._registrations.pop(balancer_id, None)
        await self.fallback.retire(balancer_id, keys)
        self._retirements[balancer_id] = keys
        if self.degraded:
            return  # the probe deletes it when Redis is back
        try:
            await self.primary.retire(balancer_id, keys)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._mark_down(exc)
        else:
            self._retirements.pop(balancer_id, None)

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        if not self.degraded:
            try:
                return await self.primary.rollups(keys, minutes)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._mark_down(exc)
        return await self.fallback.rollups(keys, minutes)

    async def healthy(self) -> bool:
        return await self.primary.healthy()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.primary.close()
