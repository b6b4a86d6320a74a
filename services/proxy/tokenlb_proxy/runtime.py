"""The resources one replica shares between its proxy and admin apps.

Created by the app factory, opened on startup and closed on shutdown: the store (Redis
with local fallback, or local alone), one pooled httpx client (aiohttp underneath), and the
compiled config. Nothing connects at import time.
"""

from __future__ import annotations

import time

import httpx

from tokenlb_proxy.config import load_config
from tokenlb_proxy.plan import Gateway
from tokenlb_proxy.proxy import ProxyService
from tokenlb_proxy.settings import ProxySettings
from tokenlb_proxy.store import LocalStore, RedisStore, ResilientStore, UsageStore
from tokenlb_proxy.store.redis import connect_redis
from tokenlb_proxy.tokens import get_counter
from tokenlb_proxy.transport import AiohttpTransport

__all__ = ["Runtime"]


class Runtime:
    """Everything a replica holds open while it serves."""

    def __init__(self, settings: ProxySettings, gateway: Gateway | None = None) -> None:
        self.settings = settings
        self.gateway = gateway if gateway is not None else load_config(settings.config_path)
        self.store: UsageStore
        if settings.redis_url:
            self.store = ResilientStore(RedisStore(connect_redis(settings.redis_url)), LocalStore())
        else:
            self.store = LocalStore()
        limits = httpx.Limits(
            max_connections=settings.max_upstream_connections,
            max_keepalive_connections=settings.max_upstream_connections,
            keepalive_expiry=30,
        )
        # httpx's API, aiohttp's I/O: see transport.py for why and what it bought.
        self.http = httpx.AsyncClient(
            transport=AiohttpTransport(limits), limits=limits, follow_redirects=False
        )
        self.proxy = ProxyService(self.gateway, self.store, self.http)
        self.started_at = time.time()

    async def start(self) -> None:
        """Warm what the first request would otherwise pay for."""
        get_counter()
        await self.store.healthy()

    async def close(self) -> None:
        await self.proxy.drain()
        await self.http.aclose()
        await self.store.close()
