"""The flat config document: what the fleet stores and the Admin API edits.

A kong.yaml may nest routes under services, plugins under any entity, credentials and
group memberships under consumers, and refer to other entities by name. The fleet keeps
one *flat* form instead (the contract in ``notes/common.md``): every entity at the top
level with an ``id`` and ``created_at``, every reference ``{"id": ...}``, plugin configs
with Kong's defaults filled in, every list sorted by id (the order Kong's Admin API pages
in). Three functions move between the forms:

- ``normalize``: any decK form -> flat. Entities without an id get a uuid5 of their natural
  key (kind and name; a plugin's name, scope and instance name; a credential's consumer and
  position, never the key itself), so every replica seeding the same file stores the same
  document. References that name nothing raise ``ConfigError`` here, with the path in the
  file, because the flat form can only hold references that resolve to an id.
- ``nest``: flat -> decK kong.yaml, for ``tokenlb config dump``; ids are kept so a later sync
  of the dump maps onto the same entities, and ``normalize(nest(flat)) == flat``.
- ``validate``: flat -> ``Gateway``, the one validation path (``compile_gateway``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from tokenlb_proxy.config.compile import compile_gateway
from tokenlb_proxy.config.declarative import (
    Consumer,
    ConsumerGroup,
    DeclarativeConfig,
    EntityRef,
    KeyAuthCredential,
    PluginEntry,
    Route,
    Service,
)
from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.config.loader import schema_errors
from tokenlb_proxy.config.plugins import plugin_config_with_defaults
from tokenlb_proxy.plan import Gateway

__all__ = [
    "ENTITY_NAMESPACE",
    "KINDS",
    "NESTED",
    "PLUGIN_SCOPES",
    "STRUCTS",
    "config_with_defaults",
    "flat_entity",
    "nest",
    "normalize",
    "service_defaults",
    "validate",
]

#: Namespace of the uuid5 ids ``normalize`` derives from natural keys. Never change it:
#: replicas and dumps of different releases must derive the same ids.
ENTITY_NAMESPACE = uuid.UUID("5b3f4c1e-7a0d-4f6e-9a53-3c1d2b7e8f10")

#: The flat document's entity lists, in the order references point (a route refers to a
#: service, a plugin to any of the others).
KINDS = ("services", "routes", "consumer_groups", "consumers", "keyauth_credentials", "plugins")

#: Each kind's decK model, and the fields that hold nested entities in decK form (never
#: part of a flat entity).
STRUCTS: dict[str, type[msgspec.Struct]] = {
    "services": Service,
    "routes": Route,
    "consumer_groups": ConsumerGroup,
    "consumers": Consumer,
    "keyauth_credentials": KeyAuthCredential,
    "plugins": PluginEntry,
}
NESTED: dict[str, tuple[str, ...]] = {
    "services": ("routes", "plugins"),
    "routes": ("plugins",),
    "consumer_groups": ("consumers", "plugins"),
    "consumers": ("keyauth_credentials", "plugins"),
    "keyauth_credentials": (),
    "plugins": (),
}

#: The scope fields of a plugin and the entity list each one refers to.
PLUGIN_SCOPES = (
    ("service", "services"),
    ("route", "routes"),
    ("consumer", "consumers"),
    ("consumer_group", "consumer_groups"),
)

_DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 80, "grpcs": 443, "tcp": 80, "tls": 443}
_SERVICE_DEFAULTS: dict[str, Any] = {
    "protocol": "http",
    "retries": 5,
    "connect_timeout": 60000,
    "write_timeout": 60000,
    "read_timeout": 60000,
}


def validate(flat: dict[str, Any]) -> Gateway:
    """Compile a flat document or raise ``ConfigError`` listing every problem."""
    try:
        doc = msgspec.convert(flat, DeclarativeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(schema_errors(flat, DeclarativeConfig, "")) from exc
    return compile_gateway(doc)


def config_with_defaults(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A plugin's ``config`` with Kong's defaults filled in, as Kong stores and returns it.

    A config its schema refuses, and a plugin tokenlb does not implement, is returned as
    given: the compile step reports what is wrong, at the field paths the user wrote.
    """
    try:
        return plugin_config_with_defaults(name, config)
    except ConfigError:
        return config


def service_defaults(service: dict[str, Any]) -> dict[str, Any]:
    """A service as Kong stores it: ``url`` split into protocol, host, port and path, and
    Kong's defaults for the fields left out."""
    url = service.get("url")
    if url:
        parts = urlsplit(url)
        service.update(
            url=None,
            protocol=parts.scheme or None,
            host=parts.hostname,
            port=parts.port,
            path=parts.path if parts.path not in ("", "/") else None,
        )
    for key, default in _SERVICE_DEFAULTS.items():
        if service.get(key) is None:
            service[key] = default
    if service.get("port") is None:
        service["port"] = _DEFAULT_PORTS.get(service["protocol"], 80)
    return service


def flat_entity(kind: str, struct: msgspec.Struct, now: int) -> dict[str, Any]:
    """One decoded entity (``STRUCTS[kind]``) as the flat document holds it: without its
    nested entities, with Kong's defaults, timestamps ``now`` where missing. References and
    the id are left as they are: resolving them is the caller's business."""
    entity = _json_like(struct)
    for key in NESTED[kind]:
        entity.pop(key, None)
    if entity.get("created_at") is None:
        entity["created_at"] = now
    if "updated_at" in entity and entity["updated_at"] is None:
        entity["updated_at"] = now
    if kind == "services":
        service_defaults(entity)
    elif kind == "plugins":
        entity["config"] = config_with_defaults(entity["name"], entity["config"])
    return entity


def _json_like(struct: msgspec.Struct) -> dict[str, Any]:
    """``struct`` as the JSON the repository stores (lists, not tuples), so a document
    compares equal before and after a trip through Redis."""
    value: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(struct))
    return value


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(ENTITY_NAMESPACE, "\x1f".join(parts)))


class _Index:
    """Ids of one kind of entity by id and by name, to resolve references."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.ids: dict[str, str] = {}
        self.names: dict[str, str] = {}  # id -> natural name (or the id)

    def add(
        self,
        entity_id: str,
        name: str | None,
        natural: str | None,
        path: str,
        errors: list[FieldError],
    ) -> None:
        if entity_id in self.names or (name and name in self.ids):
            what = f"name {name!r}" if name else f"id {entity_id!r}"
            if self.kind == "plugins" and name is None:
                what = "(the same name, scope and instance_name as another)"
            errors.append(FieldError(path, f"duplicate {self.kind[:-1]} {what}"))
        self.names[entity_id] = natural or entity_id
        self.ids[entity_id] = entity_id
        if name:
            self.ids[name] = entity_id

    def resolve(self, ref: EntityRef, path: str, errors: list[FieldError]) -> dict[str, str] | None:
        value = ref if isinstance(ref, str) else ref.get("id") or ref.get("name") or ""
        found = self.ids.get(value)
        if found is None:
            errors.append(FieldError(path, f"no {self.kind[:-1]} {value!r}"))
            return None
        return {"id": found}


class _Normalizer:
    """One pass over a decoded document; collects every error before raising."""

    def __init__(self, doc: DeclarativeConfig, now: int) -> None:
        self.doc = doc
        self.now = now
        self.errors: list[FieldError] = []
        self.index = {kind: _Index(kind) for kind in KINDS}
        self.flat: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}

    def run(self) -> dict[str, Any]:
        doc = self.doc
        # Every entity that can be referred to gets its id first, so references may point
        # forwards as well as backwards in the file.
        services = [self._service(s, f"services[{i}]") for i, s in enumerate(doc.services)]
        routes: list[tuple[Route, str, dict[str, Any]]] = []
        for (service, path), service_flat in zip(
            ((s, f"services[{i}]") for i, s in enumerate(doc.services)), services, strict=True
        ):
            for r_index, route in enumerate(service.routes):
                r_path = f"{path}.routes[{r_index}]"
                routes.append((route, r_path, self._route(route, r_path, service_flat)))
        for r_index, route in enumerate(doc.routes):
            r_path = f"routes[{r_index}]"
            routes.append((route, r_path, self._route(route, r_path, None)))
        groups = [
            self._group(g, f"consumer_groups[{i}]") for i, g in enumerate(doc.consumer_groups)
        ]
        consumers = [self._consumer(c, f"consumers[{i}]") for i, c in enumerate(doc.consumers)]

        for route, path, route_flat in routes:
            if route.service is not None and route_flat["service"] is None:
                route_flat["service"] = self.index["services"].resolve(
                    route.service, f"{path}.service", self.errors
                )
        self._memberships(consumers, groups)
        self._credentials(consumers)
        self._plugins(services, routes, consumers, groups)
        if self.errors:
            raise ConfigError(self.errors)
        flat: dict[str, Any] = {"_format_version": "3.0"}
        for kind in KINDS:
            flat[kind] = sorted(self.flat[kind], key=lambda e: str(e["id"]))
        return flat

    def _entity(
        self,
        kind: str,
        struct: msgspec.Struct,
        natural: str | None,
        path: str,
        name: str | None = None,
    ) -> dict[str, Any]:
        """``struct`` as a flat entity; ``natural``: the key its uuid5 is derived from
        (the path in the file when it has none), ``name``: what references may call it."""
        entity = flat_entity(kind, struct, self.now)
        entity_id = entity.get("id") or _uuid(kind, natural or path)
        entity["id"] = entity_id
        self.index[kind].add(entity_id, name, natural, path, self.errors)
        self.flat[kind].append(entity)
        return entity

    def _service(self, service: Service, path: str) -> dict[str, Any]:
        return self._entity("services", service, service.name, path, service.name)

    def _route(self, route: Route, path: str, service: dict[str, Any] | None) -> dict[str, Any]:
        entity = self._entity("routes", route, route.name, path, route.name)
        entity["service"] = {"id": service["id"]} if service is not None else None
        return entity

    def _group(self, group: ConsumerGroup, path: str) -> dict[str, Any]:
        return self._entity("consumer_groups", group, group.name, path, group.name)

    def _consumer(self, consumer: Consumer, path: str) -> dict[str, Any]:
        if not consumer.username and not consumer.custom_id:
            self.errors.append(
                FieldError(
                    path,
                    "at least one of these fields must be non-empty: 'custom_id', 'username'",
                )
            )
        natural = consumer.username or (consumer.custom_id and f"custom_id:{consumer.custom_id}")
        entity = self._entity("consumers", consumer, natural or None, path, consumer.username)
        entity["groups"] = []
        return entity

    def _memberships(self, consumers: list[dict[str, Any]], groups: list[dict[str, Any]]) -> None:
        groups_index, consumers_index = self.index["consumer_groups"], self.index["consumers"]
        members: dict[str, list[str]] = {c["id"]: [] for c in consumers}
        for c_index, consumer in enumerate(self.doc.consumers):
            for g_index, ref in enumerate(consumer.groups):
                found = groups_index.resolve(
                    ref, f"consumers[{c_index}].groups[{g_index}]", self.errors
                )
                if found is not None:
                    members[consumers[c_index]["id"]].append(found["id"])
        for g_index, group in enumerate(self.doc.consumer_groups):
            for m_index, ref in enumerate(group.consumers):
                found = consumers_index.resolve(
                    ref, f"consumer_groups[{g_index}].consumers[{m_index}]", self.errors
                )
                if found is not None:
                    members[found["id"]].append(groups[g_index]["id"])
        for consumer_flat in consumers:
            unique = sorted(set(members[consumer_flat["id"]]))
            consumer_flat["groups"] = [{"id": group_id} for group_id in unique]

    def _credentials(self, consumers: list[dict[str, Any]]) -> None:
        positions: dict[str, int] = {}
        placed: list[tuple[KeyAuthCredential, str, str | None]] = []
        for c_index, consumer in enumerate(self.doc.consumers):
            for k_index, cred in enumerate(consumer.keyauth_credentials):
                placed.append(
                    (
                        cred,
                        f"consumers[{c_index}].keyauth_credentials[{k_index}]",
                        consumers[c_index]["id"],
                    )
                )
        for k_index, cred in enumerate(self.doc.keyauth_credentials):
            path = f"keyauth_credentials[{k_index}]"
            found = None
            if cred.consumer is None:
                self.errors.append(FieldError(f"{path}.consumer", "required field missing"))
            else:
                found = self.index["consumers"].resolve(
                    cred.consumer, f"{path}.consumer", self.errors
                )
            placed.append((cred, path, found["id"] if found else None))
        for cred, path, consumer_id in placed:
            if consumer_id is None:
                continue
            position = positions.get(consumer_id, 0)
            positions[consumer_id] = position + 1
            owner = self.index["consumers"].names[consumer_id]
            entity = self._entity("keyauth_credentials", cred, f"{owner}#{position}", path)
            entity["consumer"] = {"id": consumer_id}

    def _plugins(
        self,
        services: list[dict[str, Any]],
        routes: list[tuple[Route, str, dict[str, Any]]],
        consumers: list[dict[str, Any]],
        groups: list[dict[str, Any]],
    ) -> None:
        doc = self.doc
        nested: list[tuple[PluginEntry, str, str | None, dict[str, Any] | None]] = [
            (p, f"plugins[{i}]", None, None) for i, p in enumerate(doc.plugins)
        ]
        parents: list[tuple[str, str, Iterable[PluginEntry], dict[str, Any]]] = []
        for i, (service, flat) in enumerate(zip(doc.services, services, strict=True)):
            parents.append(("service", f"services[{i}]", service.plugins, flat))
        for route, path, flat in routes:
            parents.append(("route", path, route.plugins, flat))
        for i, (consumer, flat) in enumerate(zip(doc.consumers, consumers, strict=True)):
            parents.append(("consumer", f"consumers[{i}]", consumer.plugins, flat))
        for i, (group, flat) in enumerate(zip(doc.consumer_groups, groups, strict=True)):
            parents.append(("consumer_group", f"consumer_groups[{i}]", group.plugins, flat))
        for scope, path, entries, owner in parents:
            nested += [(p, f"{path}.plugins[{i}]", scope, owner) for i, p in enumerate(entries)]
        for entry, path, parent_scope, parent in nested:
            self._plugin(entry, path, parent_scope, parent)

    def _plugin(
        self,
        entry: PluginEntry,
        path: str,
        parent_scope: str | None,
        parent: dict[str, Any] | None,
    ) -> None:
        refs: dict[str, dict[str, str] | None] = {}
        names = [entry.name]
        for field, kind in PLUGIN_SCOPES:
            ref: dict[str, str] | None = None
            given = getattr(entry, field)
            if field == parent_scope and parent is not None:
                ref = {"id": parent["id"]}
            elif given is not None:
                ref = self.index[kind].resolve(given, f"{path}.{field}", self.errors)
                if ref is None:  # reported; kept apart from other plugins all the same
                    names.append(f"{field}?{given}")
            refs[field] = ref
            names.append(f"{field}={self.index[kind].names[ref['id']]}" if ref else "")
        names.append(entry.instance_name or "")
        entity = self._entity("plugins", entry, "|".join(names), path)
        entity.update(refs)


def normalize(doc: DeclarativeConfig, *, now: int | None = None) -> dict[str, Any]:
    """The flat document of ``doc`` (any decK form); ``now``: seconds since the epoch for
    entities that carry no ``created_at``/``updated_at``. Raises ``ConfigError`` listing
    every reference that names nothing and every duplicate."""
    return _Normalizer(doc, int(time.time()) if now is None else now).run()


def _name_ref(flat: dict[str, Any], kind: str, ref: dict[str, str] | None) -> str | None:
    if ref is None:
        return None
    for entity in flat.get(kind, ()):
        if entity["id"] == ref["id"]:
            name = entity.get("username" if kind == "consumers" else "name")
            return str(name) if name else str(entity["id"])
    return ref["id"]


def _clean(entity: dict[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    """``entity`` without ``drop`` and without unset (None) fields, for a readable dump."""
    skip = set(drop)
    return {k: v for k, v in entity.items() if v is not None and k not in skip}


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """The decK kong.yaml form of a flat document: routes under their service, plugins
    under the one entity they are scoped to (top level, naming their scopes, when global or
    scoped to several), credentials and group memberships under their consumer."""
    services = {
        s["id"]: _clean(s) | {"routes": [], "plugins": []} for s in flat.get("services", ())
    }
    routes: dict[str, dict[str, Any]] = {}
    top_routes: list[dict[str, Any]] = []
    for route in flat.get("routes", ()):
        nested = _clean(route, ("service",)) | {"plugins": []}
        routes[route["id"]] = nested
        service = route.get("service")
        if service is not None and service["id"] in services:
            services[service["id"]]["routes"].append(nested)
        else:
            if service is not None:
                nested["service"] = _name_ref(flat, "services", service)
            top_routes.append(nested)
    groups = {g["id"]: _clean(g) | {"plugins": []} for g in flat.get("consumer_groups", ())}
    consumers: dict[str, dict[str, Any]] = {}
    for consumer in flat.get("consumers", ()):
        nested = _clean(consumer, ("groups",))
        nested["groups"] = [
            _name_ref(flat, "consumer_groups", g) for g in consumer.get("groups") or ()
        ]
        consumers[consumer["id"]] = nested | {"keyauth_credentials": [], "plugins": []}
    for cred in flat.get("keyauth_credentials", ()):
        consumers[cred["consumer"]["id"]]["keyauth_credentials"].append(_clean(cred, ("consumer",)))
    parents = {"service": services, "route": routes, "consumer": consumers}
    parents["consumer_group"] = groups
    top_plugins: list[dict[str, Any]] = []
    for plugin in flat.get("plugins", ()):
        scopes = [(field, kind) for field, kind in PLUGIN_SCOPES if plugin.get(field)]
        if len(scopes) == 1:
            field = scopes[0][0]
            parents[field][plugin[field]["id"]]["plugins"].append(
                _clean(plugin, [f for f, _ in PLUGIN_SCOPES])
            )
            continue
        entry = _clean(plugin, [f for f, _ in PLUGIN_SCOPES])
        for field, kind in scopes:
            entry[field] = _name_ref(flat, kind, plugin[field])
        top_plugins.append(entry)
    document: dict[str, Any] = {"_format_version": "3.0"}
    for key, values in (
        ("services", list(services.values())),
        ("routes", top_routes),
        ("consumer_groups", list(groups.values())),
        ("consumers", list(consumers.values())),
        ("plugins", top_plugins),
    ):
        if values:
            document[key] = [_drop_empty(v) for v in values]
    return document


def _drop_empty(entity: dict[str, Any]) -> dict[str, Any]:
    """Without the empty nested lists (``routes: []``) nobody would write by hand."""
    result = {}
    for key, value in entity.items():
        if key in ("routes", "plugins", "keyauth_credentials", "groups") and value == []:
            continue
        result[key] = [_drop_empty(r) for r in value] if key == "routes" else value
    return result
