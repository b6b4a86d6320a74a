"""Redis first, the local store while Redis is unreachable.

A replica must keep serving when Redis goes away: it balances on its own counters
(what Kong does all the time), reports itself degraded, and logs one warning per outage.

- The first Redis error (any ``RedisError``: refused, reset, timed out, loading, out of
  memory, read-only replica, cluster down) marks the store down. From then on no request
  touches Redis: they all use the local store at once, so a dead or hung Redis costs a
  request at most the one timed-out call that revealed it (the client's socket timeout).
- While down, one background probe pings Redis every ``retry_interval_s``. When it
  answers, the probe announces this replica's balancers again (a Redis that restarted
  empty has forgotten them, and aggregators find streams only through them), then the
  store rejoins: the next selection goes through Redis.
- Reservations are settled on the store that made them. A Redis reservation made before
  an outage is settled without releasing it: if Redis lost its data the reservation is
  gone (releasing it would subtract what was never there), and if Redis kept it, it
  decays away like a crashed replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import msgspec
from redis.exceptions import RedisClusterException, RedisError

from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.rollups import MinuteRollup
from tokenlb_proxy.store.base import Algorithm, Candidate, Selection, Settlement, TargetTotals
from tokenlb_proxy.store.local import LocalStore
from tokenlb_proxy.store.redis import RedisStore

__all__ = ["ResilientStore"]

log = logging.getLogger(__name__)

# RedisClusterException (a slot no master serves) is not a RedisError.
_OUTAGE_ERRORS = (RedisError, RedisClusterException, OSError)


class ResilientStore:
    """A ``RedisStore`` with a ``LocalStore`` to fall back on."""

    kind = "redis"

    def __init__(
        self, primary: RedisStore, fallback: LocalStore, retry_interval_s: float = 1.0
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._retry_interval_s = retry_interval_s
        #: ``time.monotonic()`` when the current outage began; None while Redis answers.
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        #: What ``register`` was told, replayed to Redis when it returns.
        self._registrations: dict[str, tuple[BalancerKeys, dict[str, str]]] = {}
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
                for balancer_id, (keys, targets) in list(self._registrations.items()):
                    await self.primary.register(balancer_id, keys, targets)
            except _OUTAGE_ERRORS:
                continue
            self._mark_up()
            return

    def _mark_up(self) -> None:
        down_for = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        self._probe = None
        self._orphaned_up_to_ms = self._last_redis_ms
        log.warning(
            "Redis is reachable again after %.1f s; rejoined the fleet-wide balancer", down_for
        )

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
            except _OUTAGE_ERRORS as exc:
                self._mark_down(exc)
            else:
                self._last_redis_ms = max(self._last_redis_ms, selection.reserved_at_ms)
                return selection
        return await self.fallback.select(keys, algorithm, half_life_ms, candidates)

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        if settlement.backend == self.fallback.kind:
            await self.fallback.settle(keys, half_life_ms, settlement)
            return
        if settlement.reserved and settlement.reserved_at_ms <= self._orphaned_up_to_ms:
            settlement = msgspec.structs.replace(settlement, reserved=0.0)
        if not self.degraded:
            try:
                await self.primary.settle(keys, half_life_ms, settlement)
            except _OUTAGE_ERRORS as exc:
                self._mark_down(exc)
            else:
                return
        # The Redis reservation is out of reach; the usage still counts locally.
        unreserved = msgspec.structs.replace(settlement, reserved=0.0)
        await self.fallback.settle(keys, half_life_ms, unreserved)

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        if not self.degraded:
            try:
                return await self.primary.totals(keys, half_life_ms, target_ids)
            except _OUTAGE_ERRORS as exc:
                self._mark_down(exc)
        return await self.fallback.totals(keys, half_life_ms, target_ids)

    async def register(self, balancer_id: str, keys: BalancerKeys, targets: dict[str, str]) -> None:
        self._registrations[balancer_id] = (keys, targets)
        await self.fallback.register(balancer_id, keys, targets)
        if self.degraded:
            return  # the probe announces it when Redis is back
        try:
            await self.primary.register(balancer_id, keys, targets)
        except _OUTAGE_ERRORS as exc:
            self._mark_down(exc)

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        if not self.degraded:
            try:
                return await self.primary.rollups(keys, minutes)
            except _OUTAGE_ERRORS as exc:
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
