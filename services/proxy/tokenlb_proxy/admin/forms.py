"""Kong's form-encoded Admin API bodies, as the JSON they stand for.

Kong's own documentation writes most Admin API calls as ``curl --data name=value``
(``application/x-www-form-urlencoded``), so a Kong-compatible Admin API has to read them.
The rules are Kong's:

- dotted keys nest: ``config.balancer.algorithm=lowest-usage``;
- arrays are a repeated key (``paths=/a&paths=/b``), ``paths[]=/a``, or indexed from 1 as
  in Lua (``config.targets[1].weight=100``, objects in arrays included);
- every value arrives as a string, and the schema decides what it becomes: a number, a
  boolean (``true``/``false``), or an array of one where it wants an array. An empty
  value is null, except where the schema wants a string.

Parsing only builds the structure; ``coerce`` then converts the strings the entity's
schema (``config/declarative.py``, the plugin's config schema) types otherwise, so the
result goes through exactly the validation a JSON body does. What cannot be converted is
left as it is, for that validation to report in Kong's words.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from tokenlb_proxy.config.entities import STRUCTS
from tokenlb_proxy.config.loader import unwrap_type
from tokenlb_proxy.config.plugins import PLUGIN_SCHEMAS

__all__ = ["FORM", "FormError", "coerce_form_body", "media_type", "parse_form"]

#: The media type of a form body.
FORM = "application/x-www-form-urlencoded"

#: ``name``, then any number of ``[]`` or ``[n]``.
_KEY_PART = re.compile(r"^([^\[\]]*)((?:\[\d*\])*)$")
_INDEX = re.compile(r"\[(\d*)\]")


class FormError(ValueError):
    """A form key that names no place (``a[x]``, ``a.``, ``[1]``)."""


def media_type(content_type: str | None) -> str:
    """``content_type`` without its parameters, lower-cased ("" when there is none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_form(raw: bytes) -> dict[str, Any]:
    """The nested structure a form body describes; values stay strings."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
        _place(root, _path(key), value)
    parsed: dict[str, Any] = _listify(root)
    return parsed


def coerce_form_body(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (parsed from a form) typed by the schema of a ``kind`` entity."""
    coerced: dict[str, Any] = _coerce(body, STRUCTS[kind])
    config = coerced.get("config")
    if kind == "plugins" and isinstance(config, dict):
        schema = PLUGIN_SCHEMAS.get(str(coerced.get("name"))) or _schema_with_fields(config)
        if schema is not None:
            coerced["config"] = _coerce(config, schema)
    return coerced


# --- parsing ------------------------------------------------------------------------------

#: One step of a key: a field name, an index counted from 1, or None for "append".
_Step = str | int | None


def _path(key: str) -> list[_Step]:
    steps: list[_Step] = []
    for part in key.split("."):
        match = _KEY_PART.match(part)
        if match is None or not match.group(1):
            raise FormError(f"cannot read the form key {key!r}")
        steps.append(match.group(1))
        for index in _INDEX.findall(match.group(2)):
            if index == "":
                steps.append(None)
            elif int(index) >= 1:
                steps.append(int(index))
            else:
                raise FormError(f"form key {key!r}: indexes count from 1")
    return steps


class _Array(dict[int, Any]):
    """An array being built: index -> item; ``[]`` appends after the highest index."""


def _place(node: dict[Any, Any], steps: list[_Step], value: str) -> None:
    *parents, last = steps
    for step, following in zip(parents, steps[1:], strict=True):
        key = _slot(node, step)
        child = node.get(key)
        wanted = _Array if not isinstance(following, str) else dict
        if not isinstance(child, wanted):
            child = node[key] = wanted()
        node = child
    key = _slot(node, last)
    if key in node and isinstance(last, str):  # a repeated plain key: an array
        previous = node[key]
        node[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
    else:
        node[key] = value


def _slot(node: dict[Any, Any], step: _Step) -> Any:
    if step is None:  # "[]": the next free index
        return max((k for k in node if isinstance(k, int)), default=0) + 1
    return step


def _listify(node: Any) -> Any:
    if isinstance(node, _Array):
        return [_listify(node[i]) for i in sorted(node)]
    if isinstance(node, dict):
        return {key: _listify(value) for key, value in node.items()}
    return node


# --- typing by the schema -----------------------------------------------------------------


def _coerce(value: Any, type_: Any) -> Any:
    type_ = unwrap_type(type_)
    origin = typing.get_origin(type_)
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        if not isinstance(value, dict):
            return value
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(type_)}
        return {k: _coerce(v, fields[k]) if k in fields else v for k, v in value.items()}
    if origin in (list, tuple, set, frozenset):
        item = typing.get_args(type_)[0] if typing.get_args(type_) else Any
        if isinstance(value, str):
            return None if value == "" else [_coerce(value, item)]
        if isinstance(value, list):
            return [_coerce(v, item) for v in value]
        return value
    if origin is dict:
        args = typing.get_args(type_)
        if isinstance(value, dict) and len(args) == 2:
            return {k: _coerce(v, args[1]) for k, v in value.items()}
        return value
    if not isinstance(value, str):
        return value
    return _scalar(value, type_)


def _scalar(text: str, type_: Any) -> Any:
    """``text`` as the scalar ``type_`` wants, or unchanged when it is not one."""
    members = _members(type_)
    if str in members or Any in members:
        return text
    if text == "":
        return None
    if bool in members and text in ("true", "false"):
        return text == "true"
    for number in (int, float):
        if number in members:
            try:
                return number(text)
            except ValueError:
                continue
    return text


def _members(type_: Any) -> set[Any]:
    """The scalar types ``type_`` accepts (a Literal's values count as their types)."""
    origin = typing.get_origin(type_)
    if origin is typing.Annotated:
        return _members(typing.get_args(type_)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_members(t) for t in typing.get_args(type_)))
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(type_)}
    return {type_}


def _schema_with_fields(config: dict[str, Any]) -> type[msgspec.Struct] | None:
    """The plugin schema that has every field ``config`` names (a PATCH without
    ``name``)."""
    for schema in PLUGIN_SCHEMAS.values():
        names = {f.encode_name for f in msgspec.structs.fields(schema)}
        if set(config) <= names:
            return schema
    return None
