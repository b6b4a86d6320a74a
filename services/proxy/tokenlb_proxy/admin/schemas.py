"""Kong's schema endpoints, generated from the structs that decode every request.

``GET /schemas/{entity}`` and ``GET /schemas/plugins/{name}`` answer with Kong's field
descriptors, ``{"fields": [{"<name>": {"type", "required", "default", ...}}, ...],
"entity_checks": []}``, built by walking the very msgspec structs a POST is decoded with
(``config/declarative.py``, ``config/plugin.py``, ``config/key_auth.py``): a field, a
default or an enum value added there shows here, so the schema cannot drift from what
the Admin API accepts. decK and Kong Manager read these schemas to fill in defaults.

How a Python type reads in Kong's words::

    str / int / float / bool      string / integer / number / boolean
    Literal["a", "b"]             string with one_of ["a", "b"] (in declaration order,
                                  as "expected one of: ..." errors list them)
    tuple[T, ...], list[T]        array with elements T
    dict[K, V]                    map with keys K and values V (Any: json)
    a Struct                      record with its fields
    T | None                      T, "required": false (else "required": true: null is
                                  refused, and a field left out takes its default)
    EntityRef (name or {"id"})    foreign with the collection it refers to
    Meta(ge, le) / gt             between [ge, le] ("-inf" / "inf" when open) / gt
    Meta(min/max_length)          len_min / len_max

A regex ``pattern`` is not shown, as Kong does not show its custom validator functions.
A constraint with no Kong equivalent (``lt``, ``multiple_of``) raises ``TypeError`` when
the schema is built, so adding one forces a decision here rather than a silent omission.
The one default not held by a struct, a service's (``service_defaults``: protocol, port,
retries, timeouts), is read from the function that fills it in. What tokenlb refuses
beyond the schema ("not supported yet" values, cross-field rules) is checked by the
compile step, as Kong's custom entity checks are, and is not listed.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import msgspec
import msgspec.structs

from tokenlb_proxy.admin.crud import refused_fields
from tokenlb_proxy.config.declarative import EntityRef, PluginEntry
from tokenlb_proxy.config.entities import KINDS, PLUGIN_SCOPES, STRUCTS, service_defaults
from tokenlb_proxy.config.plugins import PLUGIN_SCHEMAS

__all__ = ["entity_schema", "plugin_schema"]

#: Reference fields -> the collection they refer to (Kong's ``reference``).
_REFERENCES = dict(PLUGIN_SCOPES) | {"client_certificate": "certificates"}
_ENTITY_REF = frozenset(typing.get_args(EntityRef))
_SCALARS: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}


def entity_schema(kind: str) -> dict[str, Any] | None:
    """``GET /schemas/{kind}``: the fields a body of ``kind`` may hold; None for a kind
    tokenlb does not have."""
    if kind not in KINDS:
        return None
    refused = refused_fields(kind)
    fields = [
        _field(f) for f in msgspec.structs.fields(STRUCTS[kind]) if f.encode_name not in refused
    ]
    # A service's protocol, port, retries and timeouts are filled in by code (they follow
    # its url), not by its struct: show what that code fills into an empty service.
    filled = service_defaults({}) if kind == "services" else {}
    for entry in fields:
        for name, descriptor in entry.items():
            if filled.get(name) is not None:
                descriptor["default"] = filled[name]
    return {"fields": fields, "entity_checks": []}


def plugin_schema(name: str) -> dict[str, Any] | None:
    """``GET /schemas/plugins/{name}``: what Kong calls the plugin's subschema, the
    fields it sets on the plugin entity: ``protocols`` and its ``config`` record; None
    for a plugin tokenlb does not have."""
    config = PLUGIN_SCHEMAS.get(name)
    if config is None:
        return None
    (protocols,) = (f for f in msgspec.structs.fields(PluginEntry) if f.name == "protocols")
    record = {"type": "record", "required": True, "fields": _fields(config)}
    return {"fields": [_field(protocols), {"config": record}], "entity_checks": []}


def _fields(struct: type[msgspec.Struct]) -> list[dict[str, Any]]:
    return [_field(f) for f in msgspec.structs.fields(struct)]


def _field(info: msgspec.structs.FieldInfo) -> dict[str, Any]:
    """``{name: descriptor}`` for one struct field, with ``required`` and ``default``."""
    descriptor, nullable = _describe(info.type, info.encode_name)
    shown: dict[str, Any] = {"type": descriptor.pop("type"), "required": not nullable}
    default = info.default
    if default is msgspec.NODEFAULT and info.default_factory is not msgspec.NODEFAULT:
        default = info.default_factory()
    # A record's defaults are its fields' own (Kong fills them in field by field).
    if default not in (msgspec.NODEFAULT, None) and not isinstance(default, msgspec.Struct):
        # As JSON holds it (lists, not tuples): the answer and a stored config compare equal.
        shown["default"] = msgspec.json.decode(msgspec.json.encode(default))
    shown.update(descriptor)
    return {info.encode_name: shown}


def _describe(type_: Any, name: str = "") -> tuple[dict[str, Any], bool]:
    """Kong's descriptor of ``type_`` (without ``required``) and whether it takes null;
    ``name``: the field's, for references."""
    type_, metas, nullable = _unwrap(type_)
    if type_ == "foreign":
        return {"type": "foreign", "reference": _REFERENCES[name]}, nullable
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    descriptor: dict[str, Any]
    if type_ in _SCALARS:
        descriptor = {"type": _SCALARS[type_]}
    elif type_ is Any:
        descriptor = {"type": "json"}
    elif origin is Literal:
        kinds = {_SCALARS[type(value)] for value in args}
        if len(kinds) != 1:
            raise TypeError(f"no Kong descriptor for a Literal of mixed types: {type_!r}")
        descriptor = {"type": kinds.pop(), "one_of": list(args)}
    elif origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        descriptor = {"type": "array", "elements": _describe(args[0])[0]}
    elif origin is dict:
        keys, values = (_describe(arg)[0] for arg in args)
        descriptor = {"type": "map", "keys": keys, "values": values}
    elif isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        descriptor = {"type": "record", "fields": _fields(type_)}
    else:
        raise TypeError(f"no Kong descriptor for {type_!r}")
    descriptor.update(_constraints(metas, type_))
    return descriptor, nullable


def _unwrap(type_: Any) -> tuple[Any, list[msgspec.Meta], bool]:
    """``type_`` without ``Annotated`` and ``| None``: the bare type ("foreign" for an
    EntityRef), its constraints, and whether None was allowed."""
    metas: list[msgspec.Meta] = []
    nullable = False
    while True:
        origin = typing.get_origin(type_)
        if origin is typing.Annotated:
            type_, *extras = typing.get_args(type_)
            metas += [m for m in extras if isinstance(m, msgspec.Meta)]
        elif origin in (typing.Union, types.UnionType):
            members = [t for t in typing.get_args(type_) if t is not type(None)]
            nullable = nullable or len(members) < len(typing.get_args(type_))
            if set(members) == _ENTITY_REF:
                return "foreign", metas, nullable
            if len(members) != 1:
                raise TypeError(f"no Kong descriptor for the union {type_!r}")
            type_ = members[0]
        else:
            return type_, metas, nullable


def _constraints(metas: list[msgspec.Meta], type_: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    ge = next((m.ge for m in metas if m.ge is not None), None)
    le = next((m.le for m in metas if m.le is not None), None)
    for meta in metas:
        if meta.lt is not None or meta.multiple_of is not None or meta.tz is not None:
            raise TypeError(f"no Kong descriptor for the constraint {meta!r} of {type_!r}")
        if meta.gt is not None:
            shown["gt"] = meta.gt
        if meta.min_length is not None:
            shown["len_min"] = meta.min_length
        if meta.max_length is not None:
            shown["len_max"] = meta.max_length
        if meta.description:
            shown["description"] = meta.description
    if ge is not None or le is not None:
        # Kong writes an open bound (math.huge) as "inf".
        shown["between"] = [ge if ge is not None else "-inf", le if le is not None else "inf"]
    return shown
