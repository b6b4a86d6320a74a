"""Reading a config file in any of the forms Kong's docs show.

Accepted, unchanged:
- a decK ``kong.yaml`` (``_format_version``, ``services``, ``routes``, ``plugins``);
- an Admin API plugin body (``{"name": "ai-proxy-advanced", "config": {...}}``), as global;
- a ``KongPlugin`` / ``KongClusterPlugin`` manifest (its ``config`` block), as global.
decK's ``${{ env "DECK_NAME" }}`` placeholders are filled from the environment first.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.structs
import yaml

from tokenlb_proxy.config.declarative import DeclarativeConfig
from tokenlb_proxy.config.errors import ConfigError, FieldError

__all__ = [
    "decode",
    "load_document",
    "parse_document",
    "schema_errors",
    "substitute_env",
    "unwrap_type",
]

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"\$\{\{\s*env\s+\"([^\"]*)\"\s*\}\}")
_MANIFEST_KINDS = ("KongPlugin", "KongClusterPlugin")
#: Any of these at the top level makes a document a kong.yaml.
_DECLARATIVE_KEYS = (
    "_format_version",
    "services",
    "routes",
    "plugins",
    "consumers",
    "consumer_groups",
    "keyauth_credentials",
)


def load_document(path: str | Path, environ: Mapping[str, str] | None = None) -> DeclarativeConfig:
    """Read and decode the config file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot read {path}: {exc.strerror}")]) from exc
    return parse_document(text, os.environ if environ is None else environ)


def parse_document(text: str, environ: Mapping[str, str]) -> DeclarativeConfig:
    """Decode YAML or JSON text into a declarative config, whatever form it is in."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        problem = f"not valid YAML or JSON: {_yaml_problem(exc)}"
        raise ConfigError([FieldError("", problem)]) from None
    if not documents:
        raise ConfigError([FieldError("", "the file is empty")])
    errors: list[FieldError] = []
    documents = [substitute_env(doc, environ, "", errors) for doc in documents]
    if errors:
        raise ConfigError(errors)
    merged = _merge_forms(documents)
    try:
        return msgspec.convert(merged, DeclarativeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(schema_errors(merged, DeclarativeConfig, "")) from exc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the offending line: that line
    may hold an API key, and the message goes to logs and Admin API answers."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = [p for p in (exc.context, exc.problem) if p]
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{', '.join(parts) or 'cannot parse'}{where}"


def substitute_env(
    value: Any, environ: Mapping[str, str], path: str, errors: list[FieldError]
) -> Any:
    """Replace decK placeholders in every string; only ``DECK_`` variables, as decK does."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if not name.startswith("DECK_"):
                errors.append(
                    FieldError(path, f"environment variable {name!r} must start with DECK_")
                )
                return ""
            if name not in environ:
                errors.append(FieldError(path, f"environment variable {name} is not set"))
                return ""
            return environ[name]

        substituted = _PLACEHOLDER.sub(replace, value)
        if _PLACEHOLDER.fullmatch(value.strip()):
            # decK substitutes into the file's text, so a whole-value placeholder takes
            # the YAML type of what it holds: `max_tokens: ${{ env "DECK_MAX" }}` is a number.
            return _scalar(substituted)
        return substituted
    if isinstance(value, dict):
        return {
            k: substitute_env(v, environ, _join(path, str(k)), errors) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, environ, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def _scalar(text: str) -> Any:
    """``text`` read as a YAML scalar (number, boolean, string); itself when not a scalar."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) else text


def validation_error(exc: msgspec.ValidationError, prefix: str) -> FieldError:
    """A msgspec error ("... - at `$.a.b[0]`") as a FieldError with a dotted path.

    An unknown field is reported at its own path (``balancer.algorithmm``), not its parent's.
    """
    message = str(exc)
    path = ""
    marker = " - at `$"
    if marker in message:
        message, _, where = message.partition(marker)
        path = where.rstrip("`").lstrip(".")
    path = _join(prefix, path) if path else prefix
    unknown = _UNKNOWN_FIELD.fullmatch(message)
    if unknown:
        path = _join(path, unknown.group(1))
    return FieldError(path, message)


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`")


def decode(value: Any, type_: type[T], path: str, errors: list[FieldError]) -> T | None:
    """``value`` as ``type_``, or None after adding every schema violation to ``errors``."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError:
        errors.extend(schema_errors(value, type_, path))
        return None


def schema_errors(value: Any, type_: Any, path: str) -> list[FieldError]:
    """Every schema violation in ``value`` (msgspec itself stops at the first one).

    Objects and arrays of structs are checked field by field and item by item, so a file
    with several mistakes gets them all reported at once.
    """
    try:
        msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        return _nested_errors(value, type_, path) or [validation_error(exc, path)]
    return []


def _nested_errors(value: Any, type_: Any, path: str) -> list[FieldError]:
    type_ = unwrap_type(type_)
    errors: list[FieldError] = []
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct) and isinstance(value, dict):
        fields = {f.encode_name: f for f in msgspec.structs.fields(type_)}
        if type_.__struct_config__.forbid_unknown_fields:
            errors += [
                FieldError(_join(path, str(key)), f"Object contains unknown field `{key}`")
                for key in value
                if key not in fields
            ]
        for name, field in fields.items():
            if name in value:
                errors += schema_errors(value[name], field.type, _join(path, name))
            elif field.required:
                errors.append(FieldError(path, f"Object missing required field `{name}`"))
    elif typing.get_origin(type_) in (tuple, list) and isinstance(value, list):
        args = typing.get_args(type_)
        if (len(args) == 2 and args[1] is Ellipsis) or len(args) == 1:
            for index, item in enumerate(value):
                errors += schema_errors(item, args[0], f"{path}[{index}]")
    return errors


def unwrap_type(type_: Any) -> Any:
    """``Annotated[T, ...]`` and ``T | None`` as ``T``; anything else unchanged."""
    if typing.get_origin(type_) is typing.Annotated:
        type_ = typing.get_args(type_)[0]
    if typing.get_origin(type_) in (typing.Union, types.UnionType):
        members = [t for t in typing.get_args(type_) if t is not type(None)]
        if len(members) == 1:
            return unwrap_type(members[0])
    return type_


def _merge_forms(documents: list[Any]) -> dict[str, Any]:
    """Turn every document into decK form and concatenate their plugins."""
    if len(documents) == 1 and _is_declarative(documents[0]):
        result: dict[str, Any] = documents[0]
        return result
    plugins: list[Any] = []
    for doc in documents:
        if not isinstance(doc, dict):
            raise ConfigError([FieldError("", "expected a mapping at the top level")])
        if doc.get("kind") in _MANIFEST_KINDS:
            plugins.append(_plugin_from_manifest(doc))
        elif "name" in doc and "config" in doc and not _is_declarative(doc):
            plugins.append(doc)
        elif _is_declarative(doc):
            raise ConfigError(
                [FieldError("", "a kong.yaml document cannot be combined with other documents")]
            )
        else:
            raise ConfigError(
                [
                    FieldError(
                        "",
                        "not a kong.yaml (no _format_version, services, plugins, ...), "
                        "an Admin API plugin body (name + config) or a KongPlugin manifest",
                    )
                ]
            )
    return {"_format_version": "3.0", "plugins": plugins}


def _is_declarative(doc: Any) -> bool:
    return isinstance(doc, dict) and any(key in doc for key in _DECLARATIVE_KEYS)


def _plugin_from_manifest(doc: dict[str, Any]) -> dict[str, Any]:
    if "configFrom" in doc:
        raise ConfigError([FieldError("configFrom", "not supported yet: inline config instead")])
    unknown = set(doc) - {"apiVersion", "kind", "metadata", "config", "plugin", "disabled"}
    if unknown:
        raise ConfigError(
            [FieldError(sorted(unknown)[0], "unknown field in a KongPlugin manifest")]
        )
    name = (doc.get("metadata") or {}).get("name")
    entry: dict[str, Any] = {
        "name": doc.get("plugin"),
        "config": doc.get("config") or {},
        "enabled": not doc.get("disabled", False),
    }
    if name:
        entry["instance_name"] = name
    return entry


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if name.startswith("["):
        return prefix + name
    return f"{prefix}.{name}"
