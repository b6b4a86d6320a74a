"""Which config a replica serves when it starts.

- Embedded store: the ``--config`` file, stored as version 1 of this replica's own
  (in-memory) repository.
- Redis holds no document yet: the file seeds it, with compare-and-set on version 0.
  Replicas seeding the same file at once store the same document (``normalize`` derives
  ids from names), so whoever wins, they all serve the same config.
- Redis holds a document: Redis wins. The file, if any, was only a seed (said once, at
  INFO, when it differs; ``tokenlb config sync FILE`` applies it), and ``--config`` may be
  left out altogether.
- Redis is unreachable: the file is served (degraded, as the balancer state is) and the
  watcher catches up when Redis answers: it stores the file if Redis is still empty, or
  switches to what Redis holds. Without a file there is nothing to serve: the outage
  itself is raised, for ``tokenlb proxy`` to report as every command reports one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tokenlb_proxy.config import ConfigError, FieldError
from tokenlb_proxy.config.entities import validate
from tokenlb_proxy.control.documents import describe_errors, read_config_file, same_config
from tokenlb_proxy.control.repository import ConfigConflict, ConfigRepository, StoredConfig
from tokenlb_proxy.plan import Gateway
from tokenlb_proxy.redis_outage import is_outage

__all__ = ["StartingConfig", "starting_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartingConfig:
    """What a replica serves first, and what it knows the repository holds."""

    gateway: Gateway
    #: The document ``gateway`` was compiled from, and its version (0: not stored).
    served: StoredConfig
    #: The latest stored document (``served`` unless it does not compile here).
    known: StoredConfig
    #: Why ``known`` is not served (secret-safe messages), or None.
    error: list[str] | None = None


async def starting_config(config_path: str, repository: ConfigRepository) -> StartingConfig:
    """Decide what to serve (see the module docstring); ``ConfigError`` when there is
    nothing this replica can serve, the outage when Redis is unreachable and there is no
    file to serve meanwhile."""
    seed = read_config_file(config_path) if config_path else None
    try:
        stored = await repository.load()
        if stored is None and seed is not None:
            try:
                version = await repository.save(seed, 0)
            except ConfigConflict:  # another replica seeded it first
                stored = await repository.load()
            else:
                served = StoredConfig(version, seed)
                return StartingConfig(validate(seed), served, served)
    except Exception as exc:
        if not is_outage(exc):
            raise
        if seed is None:
            raise
        log.warning(
            "Redis is unreachable (%s); serving %s until it returns",
            type(exc).__name__,
            config_path,
        )
        unstored = StoredConfig(0, seed)
        return StartingConfig(validate(seed), unstored, unstored)
    if stored is None:
        raise _cannot_start(
            "Redis holds no config: start with --config FILE, or run `tokenlb config sync FILE`"
        )
    if seed is not None and not same_config(seed, stored.document):
        log.info(
            "Redis holds config version %d, which the fleet serves; %s only seeds an empty "
            "Redis (`tokenlb config sync %s` applies it)",
            stored.version,
            config_path,
            config_path,
        )
    try:
        gateway = await asyncio.to_thread(validate, stored.document)
    except ConfigError as exc:
        if seed is None:
            problems = [f"config version {stored.version} in Redis:", *describe_errors(exc)]
            raise ConfigError([FieldError("", p) for p in problems]) from None
        errors = describe_errors(exc)
        log.warning(
            "config version %d in Redis does not compile on this replica; serving %s instead: %s",
            stored.version,
            config_path,
            "; ".join(errors),
        )
        return StartingConfig(validate(seed), StoredConfig(0, seed), stored, errors)
    return StartingConfig(gateway, stored, stored)


def _cannot_start(message: str) -> ConfigError:
    return ConfigError([FieldError("", message)])
