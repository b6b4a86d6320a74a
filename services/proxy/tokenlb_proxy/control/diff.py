"""What a new flat document changes, entity by entity, as ``tokenlb config`` prints it.

Entities are matched by id: ``normalize`` derives ids from names, so the same service in
the file and in Redis is the same entity, and a renamed one is a delete plus a create.
Only what an entity configures counts: timestamps are carried over from the stored
entity (``created_at`` always, ``updated_at`` unless something changed), so syncing an
unchanged file changes nothing. Names are shown, never values: a key-auth credential is
shown by its id and consumer, not by its key.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from tokenlb_proxy.config.entities import KINDS, PLUGIN_SCOPES
from tokenlb_proxy.control.documents import without_timestamps

__all__ = ["Change", "carry_timestamps", "entity_changes", "replace_document", "summary"]

Action = Literal["create", "update", "delete"]


class Change(NamedTuple):
    """One entity created, updated or deleted."""

    action: Action
    #: Singular kind: service, route, consumer, consumer_group, keyauth_credential, plugin.
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.name}"


def replace_document(document: dict[str, Any], target: dict[str, Any], now: int) -> list[Change]:
    """Make ``document`` (a ``ConfigManager.update`` change's argument) hold ``target``,
    keeping the timestamps of the entities that stay; returns what that changed. How
    ``tokenlb config sync`` and the Admin API's ``POST /config`` store a whole config."""
    merged = carry_timestamps(document, target, now)
    changes = entity_changes(document, merged)
    document.clear()
    document.update(merged)
    return changes


def carry_timestamps(old: dict[str, Any], new: dict[str, Any], now: int) -> dict[str, Any]:
    """``new`` with the stored timestamps of the entities ``old`` already has: created
    when first stored; updated ``now`` if what it configures changed."""
    result = dict(new)
    for kind in KINDS:
        stored = {e["id"]: e for e in old.get(kind) or ()}
        entities = []
        for entity in new.get(kind) or ():
            before = stored.get(entity["id"])
            carried = dict(entity)
            if before is not None:
                carried["created_at"] = before.get("created_at", entity.get("created_at"))
                if "updated_at" in entity:
                    changed = without_timestamps(before) != without_timestamps(entity)
                    carried["updated_at"] = now if changed else before.get("updated_at", now)
            entities.append(carried)
        if kind in new:
            result[kind] = entities
    return result


def entity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """The entities ``new`` creates, updates and deletes relative to ``old``, by kind in
    reference order, then by name."""
    changes: list[Change] = []
    for kind in KINDS:
        before = {e["id"]: e for e in old.get(kind) or ()}
        after = {e["id"]: e for e in new.get(kind) or ()}
        found: list[Change] = []
        for entity_id, entity in after.items():
            if entity_id not in before:
                found.append(Change("create", _singular(kind), _name(new, kind, entity)))
            elif without_timestamps(before[entity_id]) != without_timestamps(entity):
                found.append(Change("update", _singular(kind), _name(new, kind, entity)))
        for entity_id, entity in before.items():
            if entity_id not in after:
                found.append(Change("delete", _singular(kind), _name(old, kind, entity)))
        changes += sorted(found, key=lambda c: (c.name, c.action))
    return changes


def summary(changes: list[Change]) -> str:
    counts = {action: sum(c.action == action for c in changes) for action in _ACTIONS}
    return ", ".join(f"{counts[a]} {past}" for a, past in _ACTIONS.items())


_ACTIONS: dict[Action, str] = {"create": "created", "update": "updated", "delete": "deleted"}


def _singular(kind: str) -> str:
    return kind.removesuffix("s")


def _name(document: dict[str, Any], kind: str, entity: dict[str, Any]) -> str:
    """How an operator recognises ``entity`` (never a credential's key)."""
    if kind == "plugins":
        return f"{entity.get('name')} ({_plugin_scope(document, entity)})"
    if kind == "keyauth_credentials":
        return f"{entity['id']} (consumer {_label(document, 'consumers', entity.get('consumer'))})"
    if kind == "consumers":
        return str(entity.get("username") or entity.get("custom_id") or entity["id"])
    return str(entity.get("name") or entity["id"])


def _plugin_scope(document: dict[str, Any], plugin: dict[str, Any]) -> str:
    scopes = [
        f"{field} {_label(document, kind, plugin[field])}"
        for field, kind in PLUGIN_SCOPES
        if plugin.get(field)
    ]
    instance = [f"instance {plugin['instance_name']}"] if plugin.get("instance_name") else []
    return ", ".join(instance + (scopes or ["global"]))


def _label(document: dict[str, Any], kind: str, ref: dict[str, str] | None) -> str:
    """The name of the entity ``ref`` points at (its id if it has none, or is missing)."""
    if ref is None:
        return "-"
    for entity in document.get(kind) or ():
        if entity["id"] == ref.get("id"):
            return _name(document, kind, entity)
    return str(ref.get("id"))
