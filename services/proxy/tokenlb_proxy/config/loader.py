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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tokenlb_proxy.config.declarative import DeclarativeConfig
from tokenlb_proxy.config.errors import ConfigError, FieldError

__all__ = ["load_document", "parse_document", "substitute_env"]

_PLACEHOLDER = re.compile(r"\$\{\{\s*env\s+\"([^\"]*)\"\s*\}\}")
_MANIFEST_KINDS = ("KongPlugin", "KongClusterPlugin")


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
        raise ConfigError([FieldError("", f"not valid YAML or JSON: {exc}")]) from exc
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
        raise ConfigError([validation_error(exc, "")]) from exc


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

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: substitute_env(v, environ, _join(path, str(k)), errors) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, environ, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def validation_error(exc: msgspec.ValidationError, prefix: str) -> FieldError:
    """A msgspec error ("... - at `$.a.b[0]`") as a FieldError with a dotted path."""
    message = str(exc)
    path = ""
    marker = " - at `$"
    if marker in message:
        message, _, where = message.partition(marker)
        path = where.rstrip("`").lstrip(".")
    return FieldError(_join(prefix, path) if path else prefix, message)


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
                        "not a kong.yaml (no _format_version, services, routes or plugins), "
                        "an Admin API plugin body (name + config) or a KongPlugin manifest",
                    )
                ]
            )
    return {"_format_version": "3.0", "plugins": plugins}


def _is_declarative(doc: Any) -> bool:
    return isinstance(doc, dict) and any(
        key in doc for key in ("_format_version", "services", "routes", "plugins")
    )


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
