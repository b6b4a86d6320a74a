"""Redis first, the local store while Redis is unreachable.

A replica must keep serving when Redis goes away: it balances on its own counters
(what Kong does all the time), reports itself degraded, logs one warning per outage, and
probes Redis again at most once per ``retry_interval_s``. Reservations made on one store
are settled on the same store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.rollups import MinuteRollup
from tokenlb_proxy.store.base import Algorithm, Candidate, Selection, Settlement, TargetTotals
from tokenlb_proxy.store.local import LocalStore
from tokenlb_proxy.store.redis import RedisStore

__all__ = ["ResilientStore"]

log = logging.getLogger(__name__)

_OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class ResilientStore:
    """A ``RedisStore`` with a ``LocalStore`` to fall back on."""

    kind = "redis"

    def __init__(
        self, primary: RedisStore, fallback: LocalStore, retry_interval_s: float = 1.0
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._retry_interval_s = retry_interval_s
        self._retry_at: float | None = None
        #: Outages seen since start (for /status and tests).
        self.outages = 0

    @property
    def degraded(self) -> bool:
        """True while Redis is considered unreachable."""
        return self._retry_at is not None

    def _use_primary(self) -> bool:
        return self._retry_at is None or time.monotonic() >= self._retry_at

    def _mark_down(self, exc: BaseException) -> None:
        if self._retry_at is None:
            self.outages += 1
            log.warning(
                "Redis is unreachable (%s); balancing on this replica's local counters "
                "until it returns",
                type(exc).__name__,
            )
        self._retry_at = time.monotonic() + self._retry_interval_s

    def _mark_up(self) -> None:
        if self._retry_at is not None:
            log.warning("Redis is reachable again; rejoined the fleet-wide balancer")
            self._retry_at = None

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        if self._use_primary():
            try:
                selection = await self.primary.select(keys, algorithm, half_life_ms, candidates)
            except _OUTAGE_ERRORS as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return selection
        return await self.fallback.select(keys, algorithm, half_life_ms, candidates)

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        if settlement.backend == self.fallback.kind:
            await self.fallback.settle(keys, half_life_ms, settlement)
            return
        try:
            await self.primary.settle(keys, half_life_ms, settlement)
        except _OUTAGE_ERRORS as exc:
            self._mark_down(exc)
            # The Redis reservation decays away on its own; the usage still counts locally.
            unreserved = msgspec.structs.replace(settlement, reserved=0.0)
            await self.fallback.settle(keys, half_life_ms, unreserved)

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        if self._use_primary():
            try:
                return await self.primary.totals(keys, half_life_ms, target_ids)
            except _OUTAGE_ERRORS as exc:
                self._mark_down(exc)
        return await self.fallback.totals(keys, half_life_ms, target_ids)

    async def register(self, balancer_id: str, keys: BalancerKeys, targets: dict[str, str]) -> None:
        await self.fallback.register(balancer_id, keys, targets)
        try:
            await self.primary.register(balancer_id, keys, targets)
        except _OUTAGE_ERRORS as exc:
            self._mark_down(exc)

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        if self._use_primary():
            try:
                return await self.primary.rollups(keys, minutes)
            except _OUTAGE_ERRORS as exc:
                self._mark_down(exc)
        return await self.fallback.rollups(keys, minutes)

    async def healthy(self) -> bool:
        return await self.primary.healthy()

    async def close(self) -> None:
        await self.primary.close()
