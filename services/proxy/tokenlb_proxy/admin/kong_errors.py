"""Admin API errors, shaped exactly like Kong's (``kong/db/errors.lua``, ``kong/api``).

Every refusal is one ``AdminError`` carrying the HTTP status and the JSON body::

    AdminError
    ├── 400 {"message": "Cannot parse JSON body"}
    ├── 400 schema violation        code 2  {"message", "name", "code", "fields": {...}}
    ├── 400 primary key violation   code 3  (a POST with the id of an existing entity)
    ├── 400 foreign key violation   code 4  (a reference to nothing; delete of a referenced entity)
    ├── 400 invalid offset / size   code 7 / 9
    ├── 401 {"message": "Invalid credentials. Token or User credentials required"}
    ├── 404 {"message": "Not found"}, {"message": "No entity named 'x'"} (/schemas),
    │       {"message": "No plugin named 'x'"} (/schemas/plugins)
    ├── 405 {"message": "Method not allowed"}
    └── 409 unique constraint violation  code 5

``fields`` mirrors the entity: ``config.targets[0].weight`` becomes
``{"config": {"targets": [{"weight": "..."}]}}``; problems of the entity as a whole are
listed under ``"@entity"``, as Kong does.
"""

from __future__ import annotations

import re
from typing import Any

from tokenlb_proxy.config.errors import FieldError

__all__ = [
    "AdminError",
    "foreign_key_invalid",
    "foreign_key_restricted",
    "invalid_json",
    "invalid_offset",
    "invalid_size",
    "kong_message",
    "method_not_allowed",
    "no_entity",
    "no_plugin",
    "not_found",
    "primary_key_violation",
    "schema_violation",
    "unauthorized",
    "unique_violation",
]

SCHEMA_VIOLATION = 2
PRIMARY_KEY_VIOLATION = 3
FOREIGN_KEY_VIOLATION = 4
UNIQUE_VIOLATION = 5
INVALID_OFFSET = 7
INVALID_SIZE = 9
INVALID_OPTIONS = 11
INVALID_DECLARATIVE = 14


class AdminError(Exception):
    """A request the Admin API refuses; ``body`` is what Kong would answer."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.status_code = status_code
        self.body = body


def not_found() -> AdminError:
    return AdminError(404, {"message": "Not found"})


def no_entity(name: str) -> AdminError:
    """``/schemas/{name}`` of an entity tokenlb does not have."""
    return AdminError(404, {"message": f"No entity named '{name}'"})


def no_plugin(name: str) -> AdminError:
    """``/schemas/plugins/{name}`` of a plugin tokenlb does not have."""
    return AdminError(404, {"message": f"No plugin named '{name}'"})


def method_not_allowed() -> AdminError:
    return AdminError(405, {"message": "Method not allowed"})


def invalid_json() -> AdminError:
    return AdminError(400, {"message": "Cannot parse JSON body"})


def invalid_form(reason: str) -> AdminError:
    return AdminError(400, {"message": f"Cannot parse form body: {reason}"})


def unauthorized() -> AdminError:
    return AdminError(401, {"message": "Invalid credentials. Token or User credentials required"})


def _coded(status: int, code: int, name: str, message: str, fields: Any = None) -> AdminError:
    body: dict[str, Any] = {"code": code, "name": name, "message": message}
    if fields is not None:
        body["fields"] = fields
    return AdminError(status, body)


def invalid_size(message: str) -> AdminError:
    return _coded(400, INVALID_SIZE, "invalid size", message)


def invalid_declarative(reason: str, fields: dict[str, str] | None = None) -> AdminError:
    message = f"declarative config is invalid: {reason}"
    return _coded(400, INVALID_DECLARATIVE, "invalid declarative configuration", message, fields)


def invalid_tags(reason: str) -> AdminError:
    return _coded(400, INVALID_OPTIONS, "invalid options", f"invalid option (tags: {reason})")


def invalid_offset(offset: str) -> AdminError:
    message = f"'{offset}' is not a valid offset: bad base64 encoding"
    return _coded(400, INVALID_OFFSET, "invalid offset", message)


def primary_key_violation(entity_id: str) -> AdminError:
    fields = {"id": entity_id}
    message = f"primary key violation on key '{lua_pretty(fields)}'"
    return _coded(400, PRIMARY_KEY_VIOLATION, "primary key violation", message, fields)


def unique_violation(fields: dict[str, Any]) -> AdminError:
    message = f"UNIQUE violation detected on '{lua_pretty(fields)}'"
    return _coded(409, UNIQUE_VIOLATION, "unique constraint violation", message, fields)


def foreign_key_invalid(field: str, ref: dict[str, Any], kind: str) -> AdminError:
    """A reference (``route.service``, ``plugin.consumer``, ...) to nothing."""
    message = f"the foreign key '{lua_pretty(ref)}' does not reference an existing '{kind}' entity."
    return _coded(400, FOREIGN_KEY_VIOLATION, "foreign key violation", message, {field: ref})


def foreign_key_restricted(parent: str, child: str) -> AdminError:
    """Deleting ``parent`` while a ``child`` still refers to it (a service with routes)."""
    message = f"an existing '{child}' entity references this '{parent}' entity"
    fields = {"@referenced_by": child}
    return _coded(400, FOREIGN_KEY_VIOLATION, "foreign key violation", message, fields)


def schema_violation(errors: list[FieldError]) -> AdminError:
    """Kong's schema violation for ``errors``, whose paths are relative to the entity
    ("" for the entity as a whole) and whose messages are translated with
    ``kong_message``."""
    fields: dict[str, Any] = {}
    parts: list[str] = []
    for error in sorted(errors, key=lambda e: (e.path != "", e.path)):
        _place(fields, _path_parts(error.path), error.message)
        parts.append(f"{error.path}: {error.message}" if error.path else error.message)
    if len(parts) == 1:
        message = f"schema violation ({parts[0]})"
    else:
        message = f"{len(parts)} schema violations ({'; '.join(parts)})"
    return _coded(400, SCHEMA_VIOLATION, "schema violation", message, fields)


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_parts(path: str) -> list[str | int]:
    return [int(index) if index else name for name, index in _PATH_TOKEN.findall(path)]


def _place(node: Any, parts: list[str | int], message: str) -> None:
    """Put ``message`` at ``parts`` in the nested ``fields`` tree, growing dicts for names
    and lists (None where nothing is wrong) for array indexes. A message for a record
    that also has messages for its fields goes under the record's ``"@entity"``."""
    if not parts:
        if isinstance(node, dict):
            node.setdefault("@entity", []).append(message)
        return
    head, rest = parts[0], parts[1:]
    tree: Any = node
    if isinstance(node, list) and isinstance(head, int):
        node.extend([None] * (head + 1 - len(node)))
        current = node[head]
    elif isinstance(node, dict) and isinstance(head, str):
        current = node.get(head)
    else:
        return  # the path disagrees with the tree built so far; keep what is there
    if not rest:
        if current is None:
            tree[head] = message
        elif isinstance(current, str):
            tree[head] = f"{current}; {message}"
        else:
            _place(current, [], message)
        return
    if current is None or isinstance(current, str):
        container: Any = [] if isinstance(rest[0], int) else {}
        if isinstance(current, str) and isinstance(container, dict):
            container["@entity"] = [current]
        tree[head] = current = container
    _place(current, rest, message)


_TYPE_NAMES = {
    "str": "expected a string",
    "int": "expected an integer",
    "float": "expected a number",
    "bool": "expected a boolean",
    "array": "expected an array",
    "object": "expected a record",
    "str | object": "expected a record",
}
_EXPECTED_TYPE = re.compile(r"Expected `([^`]*)`, got `[^`]*`")
_BOUND = re.compile(r"Expected `(?:int|float)` (>=|<=|>|<) (\S+)")
_LENGTH = re.compile(r"Expected `(?:array|str)` of length (>=|<=) (\d+)")
_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_BOUND_WORDS = {
    ">=": "at least",
    "<=": "at most",
    ">": "greater than",
    "<": "less than",
}


def kong_message(error: FieldError, choices: list[str] | None = None) -> FieldError:
    """``error`` (a msgspec or compile message) in Kong's words; ``choices``: the values
    an enum field accepts, for "expected one of: ..."."""
    message, path = error.message, error.path
    missing = _MISSING.fullmatch(message)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return FieldError(path, "required field missing")
    if message.startswith("Object contains unknown field"):
        return FieldError(path, "unknown field")
    if message.startswith("Invalid enum value") and choices:
        return FieldError(path, f"expected one of: {', '.join(choices)}")
    expected = _EXPECTED_TYPE.fullmatch(message)
    type_name = expected.group(1).removesuffix(" | null") if expected else ""
    if type_name in _TYPE_NAMES:
        return FieldError(path, _TYPE_NAMES[type_name])
    bound = _BOUND.fullmatch(message)
    if bound:
        return FieldError(path, f"value must be {_BOUND_WORDS[bound.group(1)]} {bound.group(2)}")
    length = _LENGTH.fullmatch(message)
    if length:
        return FieldError(path, f"length must be {_BOUND_WORDS[length.group(1)]} {length.group(2)}")
    return error


_LUA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def lua_pretty(value: Any) -> str:
    """``value`` as Kong prints a key in its messages (Penlight's ``pretty.write(v, "")``):
    ``{name="x"}``, ``{service={id="..."}}``, ``null`` for JSON null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        items = []
        for key in sorted(value):
            name = key if _LUA_NAME.fullmatch(key) else f'["{key}"]'
            items.append(f"{name}={lua_pretty(value[key])}")
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "{" + ",".join(lua_pretty(v) for v in value) + "}"
    return str(value)
