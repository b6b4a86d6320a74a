"""Changing the config a replica serves: validate, store with compare-and-set, apply.

Every change, from the Admin API or the CLI, goes through ``ConfigManager.update``: read
the stored document, apply the change to a copy, compile it (the one validation code path
shared with config files), store it only if nobody else stored a version in between (else
start again from the new version), then serve it here at once. Other replicas pick the new
version up from the repository (``control/watcher.py``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tokenlb_proxy.control.repository import ConfigConflict, ConfigRepository, StoredConfig
from tokenlb_proxy.plan import Gateway

__all__ = ["ConfigManager"]

T = TypeVar("T")

#: Compare-and-set attempts before a change gives up (each one lost a race to another writer).
MAX_ATTEMPTS = 20

#: Compiles a flat document or raises ``ConfigError`` listing every problem.
Compile = Callable[[dict[str, Any]], Gateway]
#: Serves a compiled document on this replica.
Apply = Callable[[Gateway, StoredConfig], Awaitable[None]]


class ConfigManager:
    """The replica's handle on the fleet's config document."""

    def __init__(
        self,
        repository: ConfigRepository,
        compile_: Compile,
        apply: Apply,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.repository = repository
        self._compile = compile_
        self._apply = apply
        #: Held from the save to the end of the apply (the replica's ``config_lock``), so
        #: the watcher cannot apply the new version in between: ``apply`` sees what this
        #: replica served before the change.
        self._lock = lock if lock is not None else asyncio.Lock()

    async def current(self) -> StoredConfig:
        """The stored document (an empty one before anything was stored)."""
        stored = await self.repository.load()
        return stored if stored is not None else StoredConfig(0, {"_format_version": "3.0"})

    async def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Apply ``change`` (which edits the document in place and returns what the caller
        answers with, or raises to refuse) and store the result if it compiles."""
        for _ in range(MAX_ATTEMPTS):
            stored, document, result, gateway = await self._changed(change)
            async with self._lock:
                try:
                    version = await self.repository.save(document, stored.version)
                except ConfigConflict:
                    continue
                await self._apply(gateway, StoredConfig(version, document))
            return result
        raise ConfigConflict(f"gave up after {MAX_ATTEMPTS} concurrent changes")

    async def check(self, change: Callable[[dict[str, Any]], T]) -> T:
        """What ``update`` would answer for ``change``, storing and serving nothing: the
        Admin API's ``/schemas/.../validate`` runs a body through the very steps of a
        real write, so "valid" there means a POST of it is accepted."""
        _, _, result, _ = await self._changed(change)
        return result

    async def _changed(
        self, change: Callable[[dict[str, Any]], T]
    ) -> tuple[StoredConfig, dict[str, Any], T, Gateway]:
        """``change`` applied to a copy of the stored document, and that copy compiled
        (``ConfigError`` when it does not compile)."""
        stored = await self.current()
        document = copy.deepcopy(stored.document)
        result = change(document)
        # Off the event loop: a large config takes a while to compile.
        gateway = await asyncio.to_thread(self._compile, document)
        return stored, document, result, gateway
