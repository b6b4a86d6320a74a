"""Kong's Admin API routes over the fleet's config document.

Collections and entities, as Kong serves them on port 8001::

    /services  /routes  /consumers  /consumer_groups  /plugins  /key-auths
    /{collection}/{id or endpoint key}
    /services/{s}/routes   /{services|routes|consumers|consumer_groups}/{x}/plugins
    /consumers/{c}/key-auth
    /consumer_groups/{g}/consumers   /consumers/{c}/consumer_groups   (memberships)

plus ``/{parent}/{x}/{child}/{id}`` for one nested entity, and Kong's node endpoints::

    /                    node information (admin/node.py)   /plugins/enabled
    /schemas/{entity}    /schemas/plugins/{name}            (admin/schemas.py)
    /schemas/{entity}/validate   /schemas/plugins/validate
    /tags   /tags/{tag}                                     (admin/tags.py)
    /config              the whole config (admin/declarative.py)

GET lists page like Kong's (``admin/paging.py``). Every write is one
``ConfigManager.update``: the change is applied to a copy of the document, compiled, and
stored only if it compiles, so a refused request stores nothing. A ``validate`` runs the
same change through ``ConfigManager.check``, which stops before storing. Reads answer
from the stored document as written: a plugin config holding ``{vault://env/X}`` is
returned as that reference, never as the secret's value. Any other path is Kong's 404
``{"message": "Not found"}``, a known path with another method its 405.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import msgspec

from tokenlb_proxy.admin import crud, declarative, kong_errors
from tokenlb_proxy.admin.forms import FORM, FormError, coerce_form_body, media_type, parse_form
from tokenlb_proxy.admin.kong_errors import AdminError
from tokenlb_proxy.admin.node import NodeInfo, enabled_plugins, node_info
from tokenlb_proxy.admin.paging import by_id, page, tagged
from tokenlb_proxy.admin.schemas import entity_schema, plugin_schema
from tokenlb_proxy.admin.tags import tag_rows
from tokenlb_proxy.config.errors import ConfigError
from tokenlb_proxy.control.repository import ConfigConflict, StoredConfig
from tokenlb_proxy.redis_outage import is_outage

__all__ = ["AdminApi", "Control"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: URL collection -> kind of the flat document.
COLLECTIONS = {
    "services": "services",
    "routes": "routes",
    "consumers": "consumers",
    "consumer_groups": "consumer_groups",
    "plugins": "plugins",
    "key-auths": "keyauth_credentials",
}
#: (parent collection, child collection) -> (child kind, the child's field naming the parent)
NESTED = {
    ("services", "routes"): ("routes", "service"),
    ("services", "plugins"): ("plugins", "service"),
    ("routes", "plugins"): ("plugins", "route"),
    ("consumers", "plugins"): ("plugins", "consumer"),
    ("consumer_groups", "plugins"): ("plugins", "consumer_group"),
    ("consumers", "key-auth"): ("keyauth_credentials", "consumer"),
}
#: Kong's list of loaded plugins; the path comes before ``/plugins/{id}``, as in Kong.
PLUGINS_ENABLED = ["plugins", "enabled"]
Response = tuple[int, Any]


class Control(Protocol):
    """What the Admin API needs of ``control/manager.py``'s ConfigManager."""

    async def current(self) -> StoredConfig: ...

    async def update(self, change: Callable[[dict[str, Any]], T]) -> T: ...

    async def check(self, change: Callable[[dict[str, Any]], T]) -> T: ...


class AdminApi:
    """Answers one Admin API request: (method, path, query, body) -> (status, JSON)."""

    def __init__(self, control: Callable[[], Control], node: NodeInfo | None = None) -> None:
        self._control = control
        self._node = node if node is not None else NodeInfo()

    async def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes,
        content_type: str | None = None,
    ) -> Response:
        """``content_type``: the request's; form bodies are read as Kong reads them, any
        other body as JSON (Kong's default too)."""
        try:
            segments = [s for s in path.split("/") if s]
            return await self._route(method, segments, query, _Body(body, content_type))
        except AdminError as exc:
            return exc.status_code, exc.body
        except ConfigConflict:
            return 503, {"message": "the config changed concurrently too often: try again"}
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Reads and writes need the fleet's copy; serving a stale local one would let
            # an admin edit a config the fleet no longer has.
            log.warning("Admin API: the config store is unreachable (%s)", type(exc).__name__)
            return 503, {"message": "the config store (Redis) is unreachable: try again later"}

    async def _route(
        self, method: str, segments: list[str], query: Mapping[str, str], raw: _Body
    ) -> Response:
        if segments == ["config"]:
            return await self._declarative(method, raw)
        if not segments or segments[0] in ("schemas", "tags") or segments == PLUGINS_ENABLED:
            return await self._node_route(method, segments, query, raw)
        if segments[0] not in COLLECTIONS:
            raise kong_errors.not_found()
        kind = COLLECTIONS[segments[0]]
        writes = method in ("POST", "PUT", "PATCH")
        if len(segments) == 1:
            body = raw.decode(kind) if writes else None
            return await self._collection(method, kind, None, segments, query, body)
        if len(segments) == 2:
            body = raw.decode(kind) if writes else None
            return await self._entity(method, kind, segments[1], None, body)
        parent = segments[0], segments[2]
        if parent in NESTED:
            child_kind, field = NESTED[parent]
            scope = (field, kind, segments[1])
            body = raw.decode(child_kind) if writes else None
            if len(segments) == 3:
                return await self._collection(method, child_kind, scope, segments, query, body)
            if len(segments) == 4:
                return await self._entity(method, child_kind, segments[3], scope, body)
        body = raw.decode(None) if writes else None
        if parent == ("consumer_groups", "consumers") and len(segments) in (3, 4):
            return await self._members(method, segments, query, body, "consumer_groups")
        if parent == ("consumers", "consumer_groups") and len(segments) in (3, 4):
            return await self._members(method, segments, query, body, "consumers")
        raise kong_errors.not_found()

    async def _node_route(
        self, method: str, segments: list[str], query: Mapping[str, str], raw: _Body
    ) -> Response:
        """``/``, ``/plugins/enabled``, ``/schemas/...`` and ``/tags[/{tag}]``: each takes
        one method (POST for a validate, GET for the rest), as Kong's routes do."""
        route = _node_route_name(segments)
        if route is None:
            raise kong_errors.not_found()
        if method != ("POST" if route == "validate" else "GET"):
            return _method_not_allowed()
        if route == "validate":
            return await self._validate(segments[1], raw)
        if route == "plugin schema":
            return 200, _found(plugin_schema(segments[2]), kong_errors.no_plugin(segments[2]))
        if route == "entity schema":
            return 200, _found(entity_schema(segments[1]), kong_errors.no_entity(segments[1]))
        if route == "enabled":
            return 200, enabled_plugins()
        document = (await self._control().current()).document
        if route == "tags":
            rows = tag_rows(document, time.time(), segments[1] if len(segments) > 1 else None)
            return 200, page(rows, segments, {k: v for k, v in query.items() if k != "tags"})
        return 200, node_info(self._node, document)

    async def _validate(self, kind: str, raw: _Body) -> Response:
        """``POST /schemas/{kind}/validate``: the body goes through a POST's own steps
        (decoding, ``crud.create``, the compile of the changed document) and nothing is
        stored. It is created among the entities it may refer to and no others
        (``crud.isolate``): Kong judges a body on its own, not against its siblings, and
        decK's ``validate --online`` sends entities that already exist."""
        if entity_schema(kind) is None:
            raise kong_errors.no_entity(kind)
        body = raw.decode(kind)
        now = int(time.time())

        def create_alone(doc: dict[str, Any]) -> dict[str, Any]:
            crud.isolate(doc, kind)
            return crud.create(doc, kind, body, now)

        await self._write(kind, create_alone, check_only=True)
        return 200, {"message": "schema validation successful"}

    # ---------------------------------------------------------------- collections

    async def _collection(
        self,
        method: str,
        kind: str,
        scope: tuple[str, str, str] | None,
        segments: list[str],
        query: Mapping[str, str],
        body: Any,
    ) -> Response:
        if method == "GET":
            doc = (await self._control().current()).document
            items = doc.get(kind, [])
            if scope is not None:
                field, parent_kind, key = scope
                parent = crud.get(doc, parent_kind, key)
                items = [e for e in items if e.get(field) == {"id": parent["id"]}]
            now = time.time()
            items = [e for e in tagged(items, query.get("tags")) if not crud.expired(kind, e, now)]
            return 200, page(by_id(crud.present(kind, e, now) for e in items), segments, query)
        if method != "POST":
            return _method_not_allowed()
        now = int(time.time())

        def create(doc: dict[str, Any]) -> dict[str, Any]:
            return crud.create(doc, kind, body, now, _forced(doc, scope))

        return 201, crud.present(kind, await self._write(kind, create))

    # ------------------------------------------------------------------- entities

    async def _entity(
        self,
        method: str,
        kind: str,
        key: str,
        scope: tuple[str, str, str] | None,
        body: Any,
    ) -> Response:
        if method == "GET":
            doc = (await self._control().current()).document
            entity = _scoped_entity(doc, kind, key, scope)
            if kind == "consumer_groups":
                return 200, _group_view(doc, entity)
            if crud.expired(kind, entity, time.time()):
                raise kong_errors.not_found()
            return 200, crud.present(kind, entity)
        now = int(time.time())
        if method == "PATCH":

            def update(doc: dict[str, Any]) -> dict[str, Any]:
                _scoped_entity(doc, kind, key, scope)
                return crud.patch(doc, kind, key, body, now, _forced(doc, scope))

            return 200, crud.present(kind, await self._write(kind, update))
        if method == "PUT":

            def upsert(doc: dict[str, Any]) -> dict[str, Any]:
                if scope is not None and crud.find(doc, kind, key) is not None:
                    _scoped_entity(doc, kind, key, scope)
                entity, _ = crud.put(doc, kind, key, body, now, _forced(doc, scope))
                return entity

            return 200, crud.present(kind, await self._write(kind, upsert))
        if method == "DELETE":
            doc = (await self._control().current()).document
            if crud.find(doc, kind, key) is None:
                # Kong: deleting what is not there is done; under a parent it is a 404.
                if scope is not None:
                    raise kong_errors.not_found()
                return 204, None

            def remove(doc: dict[str, Any]) -> None:
                if crud.find(doc, kind, key) is not None:
                    _scoped_entity(doc, kind, key, scope)
                    crud.delete(doc, kind, key)

            await self._write(kind, remove)
            return 204, None
        return _method_not_allowed()

    # ---------------------------------------------------------------- memberships

    async def _members(
        self,
        method: str,
        segments: list[str],
        query: Mapping[str, str],
        body: Any,
        owner_kind: str,
    ) -> Response:
        """``/consumer_groups/{g}/consumers[/{c}]`` and ``/consumers/{c}/consumer_groups[/{g}]``."""
        other_kind = "consumers" if owner_kind == "consumer_groups" else "consumer_groups"
        owner_key = segments[1]
        if len(segments) == 4:
            if method != "DELETE":
                return _method_not_allowed()

            def leave(doc: dict[str, Any]) -> None:
                owner = crud.get(doc, owner_kind, owner_key)
                other = crud.get(doc, other_kind, segments[3])
                if owner_kind == "consumer_groups":
                    crud.remove_member(doc, group=owner, consumer=other)
                else:
                    crud.remove_member(doc, group=other, consumer=owner)

            await self._write(owner_kind, leave)
            return 204, None
        if method == "GET":
            doc = (await self._control().current()).document
            owner = crud.get(doc, owner_kind, owner_key)
            if owner_kind == "consumer_groups":
                listed = _members_of(doc, owner)
            else:
                ids = [g["id"] for g in owner.get("groups") or ()]
                listed = [g for g in doc.get("consumer_groups", ()) if g["id"] in ids]
            return 200, page(by_id(crud.present(other_kind, e) for e in listed), segments, query)
        if method != "POST":
            return _method_not_allowed()
        field = "consumer" if owner_kind == "consumer_groups" else "group"
        if not isinstance(body, dict) or not body.get(field):
            raise AdminError(400, {"message": f"must provide {field}"})
        refs = body[field] if isinstance(body[field], list) else [body[field]]
        now = int(time.time())

        def join(doc: dict[str, Any]) -> dict[str, Any]:
            owner = crud.get(doc, owner_kind, owner_key)
            others = []
            for ref in refs:
                found = crud.find(doc, other_kind, ref) if isinstance(ref, str) else None
                if found is None:
                    raise kong_errors.not_found()
                others.append(found)
            if owner_kind == "consumer_groups":
                crud.add_members(doc, owner, others, now)
                return {
                    "consumer_group": crud.present("consumer_groups", owner),
                    "consumers": [crud.present("consumers", c) for c in others],
                }
            for group in others:
                crud.add_members(doc, group, [owner], now)
            return {
                "consumer": crud.present("consumers", owner),
                "consumer_groups": [crud.present("consumer_groups", g) for g in others],
            }

        return 201, await self._write(owner_kind, join)

    # --------------------------------------------------------------------- writes

    async def _declarative(self, method: str, body: _Body) -> Response:
        if method == "GET":
            return 200, declarative.dump((await self._control().current()).document)
        if method != "POST":
            return _method_not_allowed()
        text = declarative.config_text(body.raw, body.content_type)
        try:
            return 201, await self._control().update(lambda doc: declarative.replace(doc, text))
        except ConfigError as exc:
            raise declarative.declarative_error(exc) from None

    async def _write(
        self, kind: str, change: Callable[[dict[str, Any]], T], check_only: bool = False
    ) -> T:
        """Run ``change`` through the config manager (only up to storing it, with
        ``check_only``); a compile failure becomes a schema violation of the entity the
        change wrote."""
        written: dict[str, int | None] = {}

        def tracked(doc: dict[str, Any]) -> T:
            result = change(doc)
            entity_id = result.get("id") if isinstance(result, dict) else None
            written["index"] = crud.index_of(doc, kind, entity_id) if entity_id else None
            return result

        control = self._control()
        try:
            return await (control.check(tracked) if check_only else control.update(tracked))
        except ConfigError as exc:
            raise crud.compile_error(exc, kind, written.get("index")) from None


class _Body:
    """A request body, decoded once the entity it describes is known (a form's strings
    are typed by that entity's schema)."""

    def __init__(self, raw: bytes, content_type: str | None) -> None:
        self.raw = raw
        self.content_type = content_type
        self.form = media_type(content_type) == FORM

    def decode(self, kind: str | None) -> Any:
        if not self.raw.strip():
            return {}
        if self.form:
            try:
                body = parse_form(self.raw)
            except FormError as exc:
                raise kong_errors.invalid_form(str(exc)) from None
            return coerce_form_body(kind, body) if kind is not None else body
        try:
            return msgspec.json.decode(self.raw)
        except msgspec.DecodeError:
            raise kong_errors.invalid_json() from None


def _method_not_allowed() -> Response:
    error = kong_errors.method_not_allowed()
    return error.status_code, error.body


def _node_route_name(segments: list[str]) -> str | None:
    """Which of Kong's node endpoints ``segments`` names, if any."""
    head, rest = (segments[0], segments[1:]) if segments else ("", [])
    if head == "schemas" and len(rest) == 2 and rest[1] == "validate":
        return "validate"
    if head == "schemas" and len(rest) == 2 and rest[0] == "plugins":
        return "plugin schema"
    if head == "schemas" and len(rest) == 1:
        return "entity schema"
    if head == "tags" and len(rest) <= 1:
        return "tags"
    if segments == PLUGINS_ENABLED:
        return "enabled"
    return "root" if not segments else None


def _found(schema: dict[str, Any] | None, missing: AdminError) -> dict[str, Any]:
    if schema is None:
        raise missing
    return schema


def _forced(doc: dict[str, Any], scope: tuple[str, str, str] | None) -> dict[str, Any] | None:
    """The field a nested URL sets: ``/services/{s}/plugins`` scopes to service ``s``."""
    if scope is None:
        return None
    field, parent_kind, key = scope
    return {field: {"id": crud.get(doc, parent_kind, key)["id"]}}


def _scoped_entity(
    doc: dict[str, Any], kind: str, key: str, scope: tuple[str, str, str] | None
) -> dict[str, Any]:
    """The entity ``key`` names; under a parent URL, only if it belongs to that parent."""
    entity = crud.get(doc, kind, key)
    if scope is not None:
        field, parent_kind, parent_key = scope
        parent = crud.get(doc, parent_kind, parent_key)
        if entity.get(field) != {"id": parent["id"]}:
            raise kong_errors.not_found()
    return entity


def _members_of(doc: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
    ref = {"id": group["id"]}
    return [c for c in doc.get("consumers", ()) if ref in (c.get("groups") or ())]


def _group_view(doc: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    """Kong's answer to ``GET /consumer_groups/{g}``: the group, its members and plugins."""
    ref = {"id": group["id"]}
    return {
        "consumer_group": crud.present("consumer_groups", group),
        "consumers": [crud.present("consumers", c) for c in _members_of(doc, group)],
        "plugins": [p for p in doc.get("plugins", ()) if p.get("consumer_group") == ref],
    }
