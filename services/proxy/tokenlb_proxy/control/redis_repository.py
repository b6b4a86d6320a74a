"""The fleet's config document in Redis: one hash, one compare-and-set script, one channel.

``tokenlb:config`` holds ``version`` and ``document`` (the flat kong.yaml as JSON). A save
is one call of ``lua/save_config.lua``: check the version, write, bump, and PUBLISH the
new version on ``tokenlb:config:changed``, so a replica that hears of a version always
finds it stored.

Works with every Redis URL tokenlb understands (``store/connect.py``). The document is a
single key, so on a Redis Cluster it lives on one shard. redis-py's asyncio
``RedisCluster`` has no pub/sub, so there ``subscribe()`` answers None and replicas learn
of new versions by polling ``version()`` only (``control/watcher.py``); on one server or
a Sentinel-watched master they hear them at once and poll as a fallback.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from tokenlb_proxy.control.repository import ConfigConflict, StoredConfig
from tokenlb_proxy.keys import CONFIG_CHANNEL, CONFIG_KEY
from tokenlb_proxy.scripts import lua_source
from tokenlb_proxy.store.connect import RedisClient, connect_redis

__all__ = ["RedisRepository"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])


class RedisRepository:
    """The config document every replica pointing at one Redis shares."""

    def __init__(
        self,
        client: RedisClient,
        *,
        key: str = CONFIG_KEY,
        channel: str = CONFIG_CHANNEL,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.key = key
        self.channel = channel
        #: Close the client with the repository (the CLI's own client; a replica's is
        #: shared with its store, which closes it).
        self._owns_client = owns_client
        self._save: AsyncScript = client.register_script(lua_source("save_config"))

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 5.0) -> RedisRepository:
        """A repository with its own client (for the ``tokenlb config`` commands)."""
        return cls(connect_redis(url, timeout_s=timeout_s), owns_client=True)

    async def load(self) -> StoredConfig | None:
        version, document = await self.client.hmget(self.key, ["version", "document"])
        if version is None or document is None:
            return None
        return StoredConfig(int(version), _decoder.decode(document))

    async def version(self) -> int:
        version = await self.client.hget(self.key, "version")
        return int(version) if version is not None else 0

    async def save(self, document: dict[str, Any], expected_version: int) -> int:
        return await self._store(document, expected_version, expected_version + 1)

    async def restore(self, stored: StoredConfig) -> int:
        """Store ``stored`` under its own version if Redis holds no document (it restarted
        without persistence, or was flushed): the fleet keeps its config and its version
        numbers. ``ConfigConflict`` when some document is there already."""
        return await self._store(stored.document, 0, max(1, stored.version))

    async def _store(
        self, document: dict[str, Any], expected_version: int, new_version: int
    ) -> int:
        stored, version = await self._save(
            keys=[self.key],
            args=[expected_version, new_version, _encoder.encode(document), self.channel],
        )
        if not int(stored):
            raise ConfigConflict(f"version {int(version)}, expected {expected_version}")
        return int(version)

    def subscribe(self) -> PubSub | None:
        """A pub/sub connection for ``channel`` (not yet subscribed), or None on a Redis
        Cluster, where redis-py's asyncio client has none: poll ``version()`` there."""
        if isinstance(self.client, RedisCluster):
            return None
        return self.client.pubsub(ignore_subscribe_messages=True)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()
