"""``tokenlb config sync | dump | apply``: the fleet's config in Redis from the command line.

- ``sync FILE``: make Redis hold what the file says (decK's sync). The file is validated
  by the path every config takes (decode, normalize, compile; ``{vault://env/...}``
  references are checked, and resolved only by the replicas), the difference is printed
  entity by entity, then stored with compare-and-set: replicas pick it up within a poll
  interval. ``--dry-run`` stops after printing.
- ``dump``: the stored document as a decK kong.yaml (vault references stay references).
- ``apply -f MANIFEST``: upsert the ``KongPlugin`` / ``KongClusterPlugin`` resources of a
  manifest (the bodies ``kubectl apply`` takes), by instance name = ``metadata.name``.
  A ``KongPlugin`` and a ``KongClusterPlugin`` labelled ``global: "true"`` are bound
  globally, unless ``--service/--route/--consumer/--consumer-group NAME`` bind them as a
  ``konghq.com/plugins`` annotation on that resource would.

Each returns the process exit code: 0 done, 1 invalid input or nothing stored.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tokenlb_proxy.config import ConfigError, FieldError, parse_document
from tokenlb_proxy.config.entities import config_with_defaults, nest
from tokenlb_proxy.control.diff import (
    Change,
    carry_timestamps,
    entity_changes,
    replace_document,
    summary,
)
from tokenlb_proxy.control.documents import read_config_file, validate_elsewhere
from tokenlb_proxy.control.manager import ConfigManager
from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.control.repository import StoredConfig
from tokenlb_proxy.plan import Gateway

__all__ = ["PluginBinding", "apply_manifest", "dump_config", "sync_config"]

_MANIFEST_KINDS = ("KongPlugin", "KongClusterPlugin")


class PluginBinding(msgspec.Struct, frozen=True, kw_only=True):
    """Names of the entities ``apply`` scopes the manifest's plugins to (None: any)."""

    service: str | None = None
    route: str | None = None
    consumer: str | None = None
    consumer_group: str | None = None

    def scopes(self) -> list[tuple[str, str, str]]:
        """(plugin field, entity list, name) of every scope given."""
        given = (
            ("service", "services", self.service),
            ("route", "routes", self.route),
            ("consumer", "consumers", self.consumer),
            ("consumer_group", "consumer_groups", self.consumer_group),
        )
        return [(field, kind, name) for field, kind, name in given if name]


class _Stored:
    """The versions a ``ConfigManager`` stored (what the CLI reports)."""

    def __init__(self) -> None:
        self.versions: list[int] = []

    async def __call__(self, _: Gateway, stored: StoredConfig) -> None:
        self.versions.append(stored.version)


async def sync_config(path: str, redis_url: str, *, dry_run: bool) -> int:
    try:
        target = read_config_file(path, validate_elsewhere)
    except ConfigError as exc:
        _print_errors(path, exc)
        return 1
    repository = RedisRepository.from_url(redis_url)
    stored = _Stored()
    manager = ConfigManager(repository, validate_elsewhere, stored)
    try:
        current = await manager.current()
        planned = entity_changes(current.document, target)
        if dry_run or not planned:
            note = "dry run, nothing stored" if dry_run else "nothing to store"
            _report(planned, f"{note}; Redis holds version {current.version}")
            return 0
        now = int(time.time())
        changes = await manager.update(lambda document: replace_document(document, target, now))
    except ConfigError as exc:  # refused when stored, as the Admin API would
        _print_errors(path, exc)
        return 1
    finally:
        await repository.close()
    _report(changes, f"stored as version {stored.versions[-1]}")
    return 0


def dump_config(redis_url: str, output: str | None) -> int:
    stored = asyncio.run(_load(redis_url))
    document = nest(stored.document) if stored is not None else {"_format_version": "3.0"}
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:  # reported here: the command line reads OSError as an outage
            print(f"tokenlb config dump: cannot write {output}: {exc.strerror}", file=sys.stderr)
            return 1
        version = stored.version if stored is not None else 0
        print(f"wrote config version {version} to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


async def apply_manifest(path: str, redis_url: str, binding: PluginBinding) -> int:
    try:
        plugins = _manifest_plugins(path, binding)
    except ConfigError as exc:
        _print_errors(path, exc)
        return 1
    repository = RedisRepository.from_url(redis_url)
    stored = _Stored()
    now = int(time.time())

    def upsert(document: dict[str, Any]) -> list[Change]:
        before = {**document, "plugins": list(document.get("plugins") or ())}
        for plugin in plugins:
            _upsert_plugin(document, plugin, binding, now)
        return entity_changes(before, document)

    try:
        changes = await ConfigManager(repository, validate_elsewhere, stored).update(upsert)
    except ConfigError as exc:
        _print_errors(path, exc)
        return 1
    finally:
        await repository.close()
    _report(changes, f"stored as version {stored.versions[-1]}")
    return 0


def _report(changes: list[Change], outcome: str) -> None:
    """Each change on a line, then the summary the commands end with."""
    for change in changes:
        print(change)
    print(f"Summary: {summary(changes)} ({outcome})")


async def _load(redis_url: str) -> StoredConfig | None:
    repository = RedisRepository.from_url(redis_url)
    try:
        return await repository.load()
    finally:
        await repository.close()


def _manifest_plugins(path: str, binding: PluginBinding) -> list[dict[str, Any]]:
    """The plugin entries of the manifest's resources, as flat entities without scope."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        resources = [r for r in yaml.safe_load_all(text) if r is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([FieldError("", f"cannot read a manifest: {exc}")]) from exc
    errors: list[FieldError] = []
    for index, resource in enumerate(resources):
        kind = resource.get("kind") if isinstance(resource, dict) else None
        if kind not in _MANIFEST_KINDS:
            errors.append(FieldError(f"[{index}].kind", "not a KongPlugin or KongClusterPlugin"))
        elif not (resource.get("metadata") or {}).get("name"):
            errors.append(FieldError(f"[{index}].metadata.name", "required: the instance name"))
        elif kind == "KongClusterPlugin" and not binding.scopes() and not _global(resource):
            errors.append(
                FieldError(
                    f"[{index}].metadata.labels.global",
                    'a KongClusterPlugin without global: "true" applies where it is bound: '
                    "give --service, --route, --consumer or --consumer-group",
                )
            )
    if errors:
        raise ConfigError(errors)
    # The loader checks each resource the way `tokenlb proxy --config` would.
    entries = parse_document(text, os.environ).plugins
    # Through JSON: lists, not tuples, as the stored document has them.
    return [msgspec.json.decode(msgspec.json.encode(entry)) for entry in entries]


def _global(resource: dict[str, Any]) -> bool:
    labels = (resource.get("metadata") or {}).get("labels") or {}
    return str(labels.get("global", "")).lower() == "true"


def _upsert_plugin(
    document: dict[str, Any], plugin: dict[str, Any], binding: PluginBinding, now: int
) -> None:
    """Put ``plugin`` in ``document`` under its instance name, bound as ``binding`` says;
    raises ``ConfigError`` when a binding names nothing."""
    for field, kind, name in binding.scopes():
        found = _find(document, kind, name)
        if found is None:
            raise ConfigError([FieldError(f"--{field.replace('_', '-')}", f"no {field} {name!r}")])
        plugin[field] = {"id": found}
    plugin["config"] = config_with_defaults(plugin["name"], plugin["config"])
    plugins: list[dict[str, Any]] = document.setdefault("plugins", [])
    for index, existing in enumerate(plugins):
        if existing.get("instance_name") == plugin["instance_name"]:
            updated = {**plugin, "id": existing["id"]}
            plugins[index] = carry_timestamps(
                {"plugins": [existing]}, {"plugins": [{**updated, "updated_at": now}]}, now
            )["plugins"][0]
            return
    plugins.append({**plugin, "id": _plugin_id(), "created_at": now, "updated_at": now})
    plugins.sort(key=lambda p: str(p["id"]))


def _plugin_id() -> str:
    """A new plugin's id: random, as the Admin API gives it (dumps keep it, so a later
    ``config sync`` of the dump finds the same entity)."""
    return str(uuid.uuid4())


def _find(document: dict[str, Any], kind: str, name: str) -> str | None:
    """The id of the entity of ``kind`` called (or with the id) ``name``."""
    key = "username" if kind == "consumers" else "name"
    for entity in document.get(kind) or ():
        if name in (entity.get(key), entity.get("id")):
            return str(entity["id"])
    return None


def _print_errors(source: str, exc: ConfigError) -> None:
    print(f"{source}: {len(exc.errors)} error(s), nothing stored", file=sys.stderr)
    for error in exc.errors:
        print(f"  {error}", file=sys.stderr)
