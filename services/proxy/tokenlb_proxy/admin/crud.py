"""Create, read, update and delete entities in a flat config document, as Kong's DAO does.

Pure functions on the document (``config/entities.py`` describes it); the Admin API runs
the writing ones inside ``ConfigManager.update``, so a change is compiled (the one
validation path) before anything is stored, and a refused change stores nothing. What
Kong checks before its database sees an entity is checked here, with Kong's errors: the
body's schema, references that name nothing, unique names, deleting a referenced service.

Kong's behaviours kept: PATCH merges ``config`` records recursively (arrays are replaced);
PUT replaces the whole entity but keeps its id and ``created_at``; deleting a consumer
deletes its credentials and its plugins, deleting a route or service its plugins, deleting a
consumer group its plugins and memberships; a DELETE of nothing is a 204.
"""

from __future__ import annotations

import copy
import math
import secrets
import time
import typing
import uuid
from bisect import insort
from typing import Any

import msgspec
import msgspec.structs

from tokenlb_proxy.admin import kong_errors
from tokenlb_proxy.admin.kong_errors import AdminError
from tokenlb_proxy.config.entities import KINDS, NESTED, PLUGIN_SCOPES, STRUCTS, flat_entity
from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.config.loader import schema_errors, unwrap_type
from tokenlb_proxy.config.plugin import AiProxyAdvancedConfig

__all__ = [
    "ENDPOINT_KEYS",
    "FOREIGN",
    "add_members",
    "compile_error",
    "create",
    "delete",
    "find",
    "get",
    "index_of",
    "isolate",
    "patch",
    "present",
    "put",
    "refused_fields",
    "remove_member",
]

#: The field besides ``id`` an entity is found by in a URL (``/services/{name}``).
ENDPOINT_KEYS: dict[str, str | None] = {
    "services": "name",
    "routes": "name",
    "consumers": "username",
    "consumer_groups": "name",
    "keyauth_credentials": None,
    "plugins": "instance_name",
}
#: Fields no two entities of a kind may share.
UNIQUE: dict[str, tuple[str, ...]] = {
    "services": ("name",),
    "routes": ("name",),
    "consumers": ("username", "custom_id"),
    "consumer_groups": ("name",),
    "keyauth_credentials": ("key",),
    "plugins": ("instance_name",),
}
#: Reference fields of each kind, and the kind they point to.
FOREIGN: dict[str, tuple[tuple[str, str], ...]] = {
    "services": (),
    "routes": (("service", "services"),),
    "consumers": (),
    "consumer_groups": (),
    "keyauth_credentials": (("consumer", "consumers"),),
    "plugins": PLUGIN_SCOPES,
}
#: Fields the flat document keeps that a body may not set (memberships have endpoints).
_INTERNAL: dict[str, tuple[str, ...]] = {"consumers": ("groups",)}
#: Secret fields: never echoed in an error.
_SECRET_FIELDS = frozenset({"key"})


def entities(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = doc.setdefault(kind, [])
    return listed


def refused_fields(kind: str) -> frozenset[str]:
    """Fields of ``kind``'s decK model a request body may not set: nested entities (their
    own endpoints write them) and the document's bookkeeping (memberships)."""
    return frozenset(NESTED[kind]) | frozenset(_INTERNAL.get(kind, ()))


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def find(doc: dict[str, Any], kind: str, key: str) -> dict[str, Any] | None:
    """The entity ``key`` names: its id when ``key`` is a uuid, else its endpoint key."""
    field = "id" if _is_uuid(key) else ENDPOINT_KEYS[kind]
    if field is None:
        return None
    return next((e for e in doc.get(kind, ()) if e.get(field) == key), None)


def get(doc: dict[str, Any], kind: str, key: str) -> dict[str, Any]:
    found = find(doc, kind, key)
    if found is None:
        raise kong_errors.not_found()
    return found


def index_of(doc: dict[str, Any], kind: str, entity_id: str) -> int | None:
    return next((i for i, e in enumerate(doc.get(kind, ())) if e["id"] == entity_id), None)


def expired(kind: str, entity: dict[str, Any], now: float) -> bool:
    """Whether ``entity`` is a key-auth credential whose ``ttl`` has run out: Kong deletes
    those, so the Admin API no longer shows them (the stored document keeps them until
    they are deleted; no replica accepts their key)."""
    expires_at = _expires_at(kind, entity)
    return expires_at is not None and expires_at <= now


def present(kind: str, entity: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """``entity`` as the Admin API shows it (without the document's bookkeeping); a
    key-auth credential's ``ttl`` is what is left of it at ``now``, as Kong shows it."""
    hidden = _INTERNAL.get(kind, ())
    if kind == "services":
        hidden = ("url",)  # Kong answers with protocol, host, port and path
    shown = {k: v for k, v in entity.items() if k not in hidden}
    expires_at = _expires_at(kind, entity)
    if expires_at is not None:
        left = expires_at - (time.time() if now is None else now)
        shown["ttl"] = max(0, math.ceil(left))
    return shown


def _expires_at(kind: str, entity: dict[str, Any]) -> float | None:
    """When a key-auth credential with a ``ttl`` stops working; None for anything else."""
    ttl, created_at = entity.get("ttl"), entity.get("created_at")
    if kind != "keyauth_credentials" or not ttl or created_at is None:
        return None
    return float(created_at + ttl)


# --------------------------------------------------------------------------- writes


def create(
    doc: dict[str, Any],
    kind: str,
    body: Any,
    now: int,
    forced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Insert the entity ``body`` describes; ``forced``: fields the URL sets
    (``/services/{s}/routes`` sets ``service``)."""
    fields = _body(kind, body)
    fields.update(forced or {})
    entity_id = fields.get("id") or str(uuid.uuid4())
    if index_of(doc, kind, entity_id) is not None:
        raise kong_errors.primary_key_violation(entity_id)
    if kind == "keyauth_credentials" and fields.get("key") is None:
        fields["key"] = secrets.token_hex(16)  # Kong generates a key when none is given
    entity = _build(doc, kind, fields, entity_id, now)
    _store(doc, kind, entity)
    return entity


def patch(
    doc: dict[str, Any],
    kind: str,
    key: str,
    body: Any,
    now: int,
    forced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Update the fields ``body`` names; ``config`` is merged recursively."""
    existing = get(doc, kind, key)
    changes = _body(kind, body)
    changes.update(forced or {})
    merged = copy.deepcopy(existing)
    for name, value in changes.items():
        if name == "config" and isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(merged[name], value)
        else:
            merged[name] = value
    merged["updated_at"] = now
    entity = _build(doc, kind, merged, existing["id"], now)
    _store(doc, kind, entity)
    return entity


def put(
    doc: dict[str, Any],
    kind: str,
    key: str,
    body: Any,
    now: int,
    forced: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Replace (or create) the entity ``key`` names; True when it was created."""
    existing = find(doc, kind, key)
    fields = _body(kind, body)
    fields.update(forced or {})
    endpoint_key = ENDPOINT_KEYS[kind]
    if existing is not None:
        entity_id = existing["id"]
        fields.setdefault("created_at", existing["created_at"])
        for kept in _INTERNAL.get(kind, ()):
            fields[kept] = existing.get(kept)
    elif _is_uuid(key):
        entity_id = key
    elif endpoint_key is not None:
        entity_id = str(uuid.uuid4())
    else:
        raise kong_errors.not_found()
    if not _is_uuid(key) and endpoint_key is not None:
        fields[endpoint_key] = key  # PUT /services/{name} names the service
    if kind == "keyauth_credentials" and fields.get("key") is None:
        fields["key"] = secrets.token_hex(16)
    if existing is not None and "updated_at" in existing:
        fields["updated_at"] = now
    entity = _build(doc, kind, fields, entity_id, now)
    _store(doc, kind, entity)
    return entity, existing is None


def delete(doc: dict[str, Any], kind: str, key: str) -> bool:
    """Delete the entity ``key`` names and what belongs to it; False when none."""
    entity = find(doc, kind, key)
    if entity is None:
        return False
    ref = {"id": entity["id"]}
    if kind == "services" and any(r.get("service") == ref for r in doc.get("routes", ())):
        raise kong_errors.foreign_key_restricted("services", "routes")
    doc[kind] = [e for e in doc[kind] if e["id"] != entity["id"]]
    owned: list[tuple[str, str]] = [("plugins", f) for f, k in PLUGIN_SCOPES if k == kind]
    if kind == "consumers":
        owned.append(("keyauth_credentials", "consumer"))
    for owned_kind, field in owned:
        doc[owned_kind] = [e for e in doc.get(owned_kind, ()) if e.get(field) != ref]
    if kind == "consumer_groups":
        for consumer in doc.get("consumers", ()):
            consumer["groups"] = [g for g in consumer.get("groups") or () if g != ref]
    return True


def isolate(doc: dict[str, Any], kind: str) -> None:
    """Keep in ``doc`` only the entities an entity of ``kind`` may refer to (a route its
    service, a plugin its service, route, consumer and group, ...), so that one can be
    checked on its own: no sibling to clash with, every reference still resolvable."""
    kept: set[str] = set()
    pending = [kind]
    while pending:
        for _, target in FOREIGN[pending.pop()]:
            if target not in kept:
                kept.add(target)
                pending.append(target)
    if "consumers" in kept:
        kept.add("consumer_groups")  # a consumer's memberships name groups
    for listed in KINDS:
        if listed not in kept:
            doc[listed] = []


def add_members(
    doc: dict[str, Any], group: dict[str, Any], consumers: list[dict[str, Any]], now: int
) -> None:
    """Put ``consumers`` (entities of ``doc``) in ``group``; already members stay."""
    ref = {"id": group["id"]}
    for consumer in consumers:
        groups = consumer.setdefault("groups", [])
        if ref not in groups:
            groups.append(ref)
            groups.sort(key=lambda g: str(g["id"]))
            consumer["updated_at"] = now


def remove_member(doc: dict[str, Any], group: dict[str, Any], consumer: dict[str, Any]) -> None:
    """Take ``consumer`` out of ``group``; 404 when it is not a member."""
    ref = {"id": group["id"]}
    if ref not in (consumer.get("groups") or ()):
        raise kong_errors.not_found()
    consumer["groups"] = [g for g in consumer["groups"] if g != ref]


# ------------------------------------------------------------------------ internals


def _body(kind: str, body: Any) -> dict[str, Any]:
    """A request body as fields; nested entities and bookkeeping are unknown fields."""
    if not isinstance(body, dict):
        raise kong_errors.schema_violation([FieldError("", "expected a record")])
    refused = [FieldError(name, "unknown field") for name in body if name in refused_fields(kind)]
    if "id" in body and not (isinstance(body["id"], str) and _is_uuid(body["id"])):
        refused.append(FieldError("id", "expected a valid UUID"))
    if refused:
        raise kong_errors.schema_violation(refused)
    return dict(body)


def _build(
    doc: dict[str, Any], kind: str, fields: dict[str, Any], entity_id: str, now: int
) -> dict[str, Any]:
    """The flat entity ``fields`` describe, checked as Kong checks it before storing."""
    fields["id"] = entity_id
    struct_type = STRUCTS[kind]
    try:
        struct = msgspec.convert(fields, struct_type)
    except msgspec.ValidationError:
        errors = schema_errors(fields, struct_type, "")
        raise kong_errors.schema_violation(
            [kong_errors.kong_message(e, _choices(kind, e.path)) for e in errors]
        ) from None
    if kind == "consumers" and not (fields.get("username") or fields.get("custom_id")):
        raise kong_errors.schema_violation(
            [
                FieldError(
                    "", "at least one of these fields must be non-empty: 'custom_id', 'username'"
                )
            ]
        )
    entity = flat_entity(kind, struct, now)
    for field, target in FOREIGN[kind]:
        entity[field] = _resolve(doc, field, target, fields.get(field))
    if kind == "consumers":
        entity["groups"] = fields.get("groups") or []
    _check_unique(doc, kind, entity)
    return entity


def _resolve(doc: dict[str, Any], field: str, kind: str, ref: Any) -> dict[str, str] | None:
    """A reference as ``{"id": ...}``: given as ``{"id"}``, ``{"name"}`` (or
    ``{"username"}``), or a bare name or id."""
    if ref is None:
        return None
    if isinstance(ref, str):
        key: str | None = ref
    else:
        key = ref.get("id") or ref.get(ENDPOINT_KEYS[kind] or "id") or ref.get("name")
    found = find(doc, kind, key) if key else None
    if found is None:
        shown = ref if isinstance(ref, dict) else {"id": ref}
        raise kong_errors.foreign_key_invalid(field, shown, kind)
    return {"id": found["id"]}


def _check_unique(doc: dict[str, Any], kind: str, entity: dict[str, Any]) -> None:
    others = [e for e in doc.get(kind, ()) if e["id"] != entity["id"]]
    for field in UNIQUE[kind]:
        value = entity.get(field)
        if value is not None and any(e.get(field) == value for e in others):
            shown = "<redacted>" if field in _SECRET_FIELDS else value
            raise kong_errors.unique_violation({field: shown})
    if kind == "plugins":
        # Kong's plugin cache key: one plugin of a name per scope.
        scope_fields = ["name", *(f for f, _ in PLUGIN_SCOPES)]
        key = {f: entity.get(f) for f in scope_fields}
        if any({f: e.get(f) for f in scope_fields} == key for e in others):
            raise kong_errors.unique_violation(key)


def _store(doc: dict[str, Any], kind: str, entity: dict[str, Any]) -> None:
    """Put ``entity`` in its list (replacing its old version), keeping id order."""
    listed = [e for e in entities(doc, kind) if e["id"] != entity["id"]]
    insort(listed, entity, key=lambda e: str(e["id"]))
    doc[kind] = listed


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in change.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def compile_error(exc: ConfigError, kind: str, index: int | None) -> AdminError:
    """A compile failure of a changed document as a schema violation of the entity that
    changed: ``plugins[3].config.balancer.algorithm`` becomes ``config.balancer.algorithm``.
    Problems elsewhere in the document (which the change caused) are entity-level."""
    prefix = f"{kind}[{index}]"
    errors = []
    for error in exc.errors:
        if index is not None and (error.path == prefix or error.path.startswith(prefix + ".")):
            path = error.path[len(prefix) + 1 :]
            errors.append(
                kong_errors.kong_message(FieldError(path, error.message), _choices(kind, path))
            )
        else:
            errors.append(FieldError("", str(error)))
    return kong_errors.schema_violation(errors)


def _choices(kind: str, path: str) -> list[str] | None:
    """The values of the enum at ``path`` of a ``kind`` body, if it is one."""
    type_: Any = STRUCTS[kind]
    parts = [p for p in path.replace("[", ".[").split(".") if p]
    if kind == "plugins" and parts[:1] == ["config"]:
        type_, parts = AiProxyAdvancedConfig, parts[1:]
    for part in parts:
        type_ = unwrap_type(type_)
        if part.startswith("["):
            args = typing.get_args(type_)
            type_ = args[0] if args else None
        elif isinstance(type_, type) and issubclass(type_, msgspec.Struct):
            fields = {f.encode_name: f.type for f in msgspec.structs.fields(type_)}
            type_ = fields.get(part)
        else:
            return None
    type_ = unwrap_type(type_)
    if typing.get_origin(type_) is typing.Literal:
        return [str(v) for v in typing.get_args(type_)]
    return None
