"""Keeping a replica on the config the fleet stores in Redis.

One background task per replica. It listens on ``tokenlb:config:changed`` (a save
announces its version there) and, as a fallback for a missed announcement, compares the
stored version with the one it knows every ``poll_interval_s``; on a difference it loads
the document and hands it to the replica, which compiles and serves it (or keeps serving
what it has, when the new document does not compile here). On a Redis Cluster there is no
pub/sub in redis-py's asyncio client: polling alone brings changes there.

Redis outages: every error ends the round; the watcher closes its subscription and tries
again each interval. Once Redis answers, it subscribes again and resyncs whole: it loads
the document (a change may have happened meanwhile), and if Redis came back empty
(restarted without persistence) it stores the document this replica knows under the
version it had, with compare-and-set, so the fleet keeps its config whoever is first.

The watcher only ever awaits: network calls, and the replica's ``follow`` (which compiles
off the event loop). Requests never wait on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from redis.asyncio.client import PubSub

from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.control.repository import ConfigConflict, StoredConfig
from tokenlb_proxy.redis_outage import is_outage

__all__ = ["ConfigWatcher", "Follower"]

log = logging.getLogger(__name__)


class Follower(Protocol):
    """The replica, as the watcher sees it."""

    #: The latest document this replica saw stored (whether it compiles here or not);
    #: version 0: a file that was never stored (Redis was away at start).
    known: StoredConfig
    #: Held while the replica reads or changes what it serves, so a document loaded
    #: before a local change is never applied after it.
    config_lock: asyncio.Lock

    async def follow(self, stored: StoredConfig) -> None:
        """Serve ``stored`` if it compiles here; either way it becomes ``known``."""
        ...


class ConfigWatcher:
    """Follows the repository's document until cancelled."""

    def __init__(
        self, repository: RedisRepository, follower: Follower, poll_interval_s: float
    ) -> None:
        self.repository = repository
        self.follower = follower
        self.poll_interval_s = poll_interval_s

    async def run(self) -> None:
        subscription: PubSub | None = None
        in_sync = False
        try:
            while True:
                try:
                    if not in_sync:
                        subscription = await self._subscribe()
                        await self.sync()
                        in_sync = True
                    if await self._changed(subscription):
                        await self.sync()
                except Exception as exc:  # a bug must not stop this replica following
                    if not is_outage(exc):
                        log.exception("following the fleet's config failed unexpectedly")
                    elif in_sync:
                        log.warning(
                            "lost Redis while following the fleet's config (%s); serving "
                            "version %d until it returns",
                            type(exc).__name__,
                            self.follower.known.version,
                        )
                    in_sync = False
                    await _close(subscription)
                    subscription = None
                    await asyncio.sleep(self.poll_interval_s)
        finally:
            await _close(subscription)

    async def _subscribe(self) -> PubSub | None:
        subscription = self.repository.subscribe()
        if subscription is not None:
            try:
                await subscription.subscribe(self.repository.channel)
            except BaseException:
                await _close(subscription)
                raise
        return subscription

    async def _changed(self, subscription: PubSub | None) -> bool:
        """Wait up to one poll interval for news of a version this replica does not know."""
        known = self.follower.known.version
        if subscription is not None:
            message = await subscription.get_message(
                ignore_subscribe_messages=True, timeout=self.poll_interval_s
            )
            if message is not None:
                return str(message["data"]) != str(known)
        else:
            await asyncio.sleep(self.poll_interval_s)
        return await self.repository.version() != known

    async def sync(self) -> None:
        """Bring this replica to the stored document, or restore it into an empty Redis."""
        async with self.follower.config_lock:
            stored = await self.repository.load()
            known = self.follower.known
            if stored is None:
                try:
                    version = await self.repository.restore(known)
                except ConfigConflict:
                    return  # another replica restored it first: the next round loads it
                log.warning(
                    "Redis held no config (restarted without persistence?); stored the "
                    "one this replica knows, as version %d",
                    version,
                )
                if version != known.version:  # a file never stored before: now it is
                    await self.follower.follow(StoredConfig(version, known.document))
                return
            if stored != known:
                await self.follower.follow(stored)


async def _close(subscription: PubSub | None) -> None:
    """Close ``subscription`` whatever state its connection is in."""
    if subscription is not None:
        try:
            await subscription.aclose()
        except Exception as exc:
            if not is_outage(exc):
                raise
