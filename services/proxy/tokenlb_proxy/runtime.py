"""The resources one replica shares between its proxy and admin apps.

Created by the app factory, opened on startup and closed on shutdown: the store (Redis
with local fallback, or local alone), one pooled httpx client (aiohttp underneath), and the
compiled config. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import msgspec

from tokenlb_proxy.config import load_config
from tokenlb_proxy.metrics import ProxyMetrics, TimedStore
from tokenlb_proxy.plan import BalancerPlan, Gateway
from tokenlb_proxy.proxy import ProxyService
from tokenlb_proxy.settings import ProxySettings
from tokenlb_proxy.store import LocalStore, RedisStore, ResilientStore, UsageStore
from tokenlb_proxy.store.connect import RedisClient, connect_redis
from tokenlb_proxy.tokens import get_counter
from tokenlb_proxy.transport import AiohttpTransport

__all__ = ["Runtime", "describe_targets"]

_encoder = msgspec.json.Encoder()
log = logging.getLogger(__name__)


def describe_targets(plan: BalancerPlan) -> dict[str, str]:
    """target id -> JSON with what an operator needs to recognise it (never the auth)."""
    return {
        t.target_id: _encoder.encode(
            {"model": t.label, "weight": t.weight, "url": t.url, "index": t.index}
        ).decode()
        for t in plan.targets
    }


class Runtime:
    """Everything a replica holds open while it serves."""

    def __init__(self, settings: ProxySettings, gateway: Gateway | None = None) -> None:
        self.settings = settings
        self.gateway = gateway if gateway is not None else load_config(settings.config_path)
        self.store: UsageStore
        #: The shared Redis, for the admin views of the fleet (None on the embedded store).
        self.redis: RedisClient | None = None
        if settings.redis_url:
            self.redis = connect_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)
            redis_store = RedisStore(self.redis, emit_events=settings.usage_events)
            self.store = ResilientStore(redis_store, LocalStore())
        else:
            self.store = LocalStore()
        limits = httpx.Limits(
            max_connections=settings.max_upstream_connections,
            max_keepalive_connections=settings.max_upstream_connections,
            keepalive_expiry=30,
        )
        # httpx's types, aiohttp's I/O, one pool: see transport.py for why.
        self.upstream = AiohttpTransport(limits)
        self.metrics = ProxyMetrics(self.gateway)
        # The request path times its store calls through the wrapper (/status and
        # /metrics read the store itself). With Redis the aggregators write Kong's log
        # lines from the usage events.
        self.proxy = ProxyService(
            self.gateway,
            TimedStore(self.store, self.metrics),
            self.upstream,
            self.metrics,
            write_logs=not settings.redis_url,
        )
        self.started_at = time.time()
        self._announcer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Warm what the first request would otherwise pay for, and announce the balancers
        so aggregators and `tokenlb stats` can find them."""
        get_counter()
        await self.announce()
        if self.redis is not None:
            self._announcer = asyncio.create_task(self._keep_announcing())

    async def announce(self) -> None:
        for plan in self.gateway.balancers:
            await self.store.register(plan.balancer_id, plan.keys, describe_targets(plan))

    async def _keep_announcing(self) -> None:
        """Announce again now and then: a Redis that restarted empty (or was flushed) has
        forgotten the balancers, and aggregators find streams only through them."""
        while True:
            await asyncio.sleep(self.settings.announce_interval_s)
            try:
                await self.announce()
            except Exception:
                log.warning("could not announce balancers to Redis", exc_info=True)

    def degraded(self, reachable: bool) -> bool:
        """Whether this replica balances on local counters because Redis is away
        (``reachable``: what ``store.healthy()`` just answered)."""
        return isinstance(self.store, ResilientStore) and (self.store.degraded or not reachable)

    async def close(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        await self.proxy.drain()
        await self.upstream.aclose()
        await self.store.close()
