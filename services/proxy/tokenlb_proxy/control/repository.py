"""Where the fleet's config document is kept: one version-stamped document.

The document is the flat form of a kong.yaml (``config/entities.py``): every entity at the
top level with an id. Writers replace it whole with a compare-and-set on the version, so two
admins racing on different replicas cannot lose each other's change: the loser re-reads,
re-applies its change and re-validates. Readers only ever see whole documents.

``LocalRepository`` holds it in memory (the embedded store: one replica, no Redis);
``RedisRepository`` (``control/redis_repository.py``) shares it with the fleet.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import msgspec

__all__ = ["ConfigConflict", "ConfigRepository", "LocalRepository", "StoredConfig"]


class StoredConfig(msgspec.Struct, frozen=True):
    """A config document and the version it was stored as (1, 2, ...)."""

    version: int
    document: dict[str, Any]


class ConfigConflict(Exception):
    """Someone stored another version since this writer read the document."""


class ConfigRepository(Protocol):
    """The fleet's config document, version-stamped."""

    async def load(self) -> StoredConfig | None:
        """The current document, or None when none was ever stored."""
        ...

    async def version(self) -> int:
        """The current version (0: none stored); cheap, for polling."""
        ...

    async def save(self, document: dict[str, Any], expected_version: int) -> int:
        """Store ``document`` if the current version is ``expected_version`` (0: nothing
        stored yet) and return the new version; else raise ``ConfigConflict``."""
        ...

    async def close(self) -> None: ...


class LocalRepository:
    """The document in this process's memory."""

    def __init__(self) -> None:
        self._stored: StoredConfig | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> StoredConfig | None:
        return self._stored

    async def version(self) -> int:
        return self._stored.version if self._stored is not None else 0

    async def save(self, document: dict[str, Any], expected_version: int) -> int:
        async with self._lock:
            current = await self.version()
            if current != expected_version:
                raise ConfigConflict(f"version {current}, expected {expected_version}")
            self._stored = StoredConfig(current + 1, document)
            return current + 1

    async def close(self) -> None:
        return None
