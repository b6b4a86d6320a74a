"""The resources one replica shares between its proxy and admin apps.

Opened by ``open_runtime`` before the servers start and closed on shutdown: the store
(Redis with local fallback, or local alone), one pooled httpx client (aiohttp underneath),
the config repository with its manager and watcher, and the compiled config being served.
Nothing connects at import time.

Changing the served config is one attribute assignment (``ProxyService.gateway``): a
request reads it once, when it is matched to a route, and finishes on that plan, so
requests in flight during a change are served by the config they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import httpx
import msgspec

from tokenlb_proxy.config import ConfigError
from tokenlb_proxy.config.entities import validate
from tokenlb_proxy.control.documents import describe_errors
from tokenlb_proxy.control.manager import ConfigManager
from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.control.repository import ConfigRepository, LocalRepository, StoredConfig
from tokenlb_proxy.control.startup import StartingConfig, starting_config
from tokenlb_proxy.control.watcher import ConfigWatcher
from tokenlb_proxy.metrics import ProxyMetrics, TimedStore
from tokenlb_proxy.plan import BalancerPlan, Gateway
from tokenlb_proxy.proxy import ProxyService
from tokenlb_proxy.settings import ProxySettings
from tokenlb_proxy.store import LocalStore, RedisStore, ResilientStore, UsageStore
from tokenlb_proxy.store.connect import RedisClient, connect_redis
from tokenlb_proxy.tokens import get_counter
from tokenlb_proxy.transport import AiohttpTransport

__all__ = ["Runtime", "describe_balancer", "describe_targets", "open_runtime"]

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


def describe_balancer(plan: BalancerPlan) -> dict[str, str]:
    """What a balancer balances on, for readers without its config (``tokenlb stats``)."""
    return {"algorithm": plan.algorithm, "tokens_count_strategy": plan.tokens_count_strategy}


async def open_runtime(settings: ProxySettings) -> Runtime:
    """A replica's runtime serving the config ``control/startup.py`` chooses;
    ``ConfigError`` when there is none it can serve."""
    redis = None
    if settings.redis_url:
        redis = connect_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)
    repository = RedisRepository(redis) if redis is not None else LocalRepository()
    try:
        start = await starting_config(settings.config_path, repository)
    except BaseException:
        if redis is not None:
            await redis.aclose()
        raise
    return Runtime(settings, start, repository, redis)


class Runtime:
    """Everything a replica holds open while it serves."""

    def __init__(
        self,
        settings: ProxySettings,
        start: StartingConfig,
        repository: ConfigRepository,
        redis: RedisClient | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = start.gateway
        #: The stored document ``gateway`` was compiled from (version 0: not stored yet).
        self.served = start.served
        #: The latest document seen in the repository (the watcher's reference point).
        self.known = start.known
        #: Why ``known`` is not served here (secret-safe messages), or None.
        self.config_error = start.error
        self.config_lock = asyncio.Lock()
        self.store: UsageStore
        #: The shared Redis, for the admin views of the fleet (None on the embedded store).
        self.redis = redis
        if redis is not None:
            redis_store = RedisStore(redis, emit_events=settings.usage_events)
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
        #: Every config change on this replica (Admin API, tests) goes through here.
        self.control = ConfigManager(repository, validate, self.apply, self.config_lock)
        self._watcher = (
            ConfigWatcher(repository, self, settings.config_poll_interval_s)
            if isinstance(repository, RedisRepository)
            else None
        )
        self.started_at = time.time()
        #: This process's id (the Admin API's ``node_id``), fixed for its lifetime.
        self.node_id = str(uuid.uuid4())
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Warm what the first request would otherwise pay for, announce the balancers
        so aggregators and `tokenlb stats` can find them, and follow the fleet's config."""
        get_counter()
        await self.announce()
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._keep_announcing()))
        if self._watcher is not None:
            self._tasks.append(asyncio.create_task(self._watcher.run(), name="tokenlb-config"))

    async def announce(self) -> None:
        for plan in self.gateway.balancers:
            await self.store.register(
                plan.balancer_id, plan.keys, describe_targets(plan), describe_balancer(plan)
            )

    async def _keep_announcing(self) -> None:
        """Announce again now and then: a Redis that restarted empty (or was flushed) has
        forgotten the balancers, and aggregators find streams only through them."""
        while True:
            await asyncio.sleep(self.settings.announce_interval_s)
            try:
                await self.announce()
            except Exception:
                log.warning("could not announce balancers to Redis", exc_info=True)

    # --- config changes -------------------------------------------------------------

    async def apply(self, gateway: Gateway, stored: StoredConfig) -> None:
        """Serve a change this replica just stored (``ConfigManager``, under
        ``config_lock``), and delete the state of the balancers it removed.

        The replica that made the change deletes it, once, comparing what it served
        before with what it serves now: only it knows for sure the balancer was removed
        and not just not yet seen. Deleting is idempotent. A request still in flight on
        another replica may settle on a deleted balancer and leave a few counters behind.
        """
        before = self.gateway
        self._serve(gateway, stored)
        await self.announce()
        kept = {plan.balancer_id for plan in gateway.balancers}
        for plan in before.balancers:
            if plan.balancer_id not in kept:
                await self.store.retire(plan.balancer_id, plan.keys)
                log.info("deleted the state of balancer %s (its plugin is gone)", plan.balancer_id)

    async def follow(self, stored: StoredConfig) -> None:
        """Serve a document another replica stored (the watcher, under ``config_lock``);
        one that does not compile here leaves the current config serving."""
        if stored.document == self.served.document:
            self.served = self.known = stored  # the same config under a new version
            self.config_error = None
            return
        try:
            gateway = await asyncio.to_thread(validate, stored.document)
        except ConfigError as exc:
            self.known = stored
            self.config_error = describe_errors(exc)
            log.warning(
                "config version %d does not compile on this replica; still serving version %d: %s",
                stored.version,
                self.served.version,
                "; ".join(self.config_error),
            )
            return
        self._serve(gateway, stored)
        await self.announce()
        log.info("serving config version %d (%s)", stored.version, gateway.version)

    def _serve(self, gateway: Gateway, stored: StoredConfig) -> None:
        self.gateway = gateway
        self.proxy.gateway = gateway  # the swap: new requests match against it
        self.metrics.use(gateway)
        if isinstance(self.store, ResilientStore):
            self.store.keep_only({plan.balancer_id for plan in gateway.balancers})
        self.served = self.known = stored
        self.config_error = None

    def degraded(self, reachable: bool) -> bool:
        """Whether this replica balances on local counters because Redis is away
        (``reachable``: what ``store.healthy()`` just answered)."""
        return isinstance(self.store, ResilientStore) and (self.store.degraded or not reachable)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.proxy.drain()
        await self.upstream.aclose()
        await self.store.close()
