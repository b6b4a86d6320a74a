"""Config documents as the control plane handles them: read from a file, compared, and
their errors described where anyone may read them.

A file becomes the flat document the fleet stores through the same steps everywhere
(``tokenlb proxy --config``, ``tokenlb config sync``): decode any decK form, normalize
(``config/entities.py``), validate by compiling. Two documents are the same config when
they differ only in timestamps: replicas seeding one file a second apart stamp different
``created_at`` values, and that is no change.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import msgspec

from tokenlb_proxy.config import ConfigError, compile_gateway, load_document
from tokenlb_proxy.config.declarative import DeclarativeConfig
from tokenlb_proxy.config.entities import normalize, validate
from tokenlb_proxy.config.loader import schema_errors
from tokenlb_proxy.plan import Gateway

__all__ = [
    "TIMESTAMPS",
    "describe_errors",
    "read_config_file",
    "same_config",
    "validate_elsewhere",
    "without_timestamps",
]

#: Entity fields that record when, not what.
TIMESTAMPS = ("created_at", "updated_at")
#: An env vault reference, as config/secrets.py reads them: variable, optional field.
_ENV_REFERENCE = re.compile(r"\{vault://env/([^/{}?]*)(?:/([^{}?]*))?\}")
_STAND_IN = "vault-reference-stand-in"
_encoder = msgspec.json.Encoder()
#: A quoted value in an error message ("Invalid enum value 'sk-...'"): it may be a secret
#: written into the wrong field.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def read_config_file(
    path: str, check: Callable[[dict[str, Any]], Gateway] = validate
) -> dict[str, Any]:
    """The flat document of the config file at ``path``, validated by ``check``;
    ``ConfigError`` lists every problem, without the values of decK variables (they may
    be API keys)."""
    try:
        document = normalize(load_document(path))
        check(document)
    except ConfigError as exc:
        raise exc.redacted(v for k, v in os.environ.items() if k.startswith("DECK_")) from None
    return document


def validate_elsewhere(document: dict[str, Any]) -> Gateway:
    """``validate`` for a document the replicas will serve, not this process (the
    ``tokenlb config`` commands): ``{vault://env/...}`` references are checked but not
    resolved, since the variables they name live in the replicas' environment."""
    try:
        doc = msgspec.convert(document, DeclarativeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(schema_errors(document, DeclarativeConfig, "")) from exc
    return compile_gateway(doc, _stand_ins(document))


def _stand_ins(document: dict[str, Any]) -> dict[str, str]:
    """A stand-in value for every variable the env vault references of ``document`` name
    (a JSON object with the fields the references read, where they read fields)."""
    fields: dict[str, set[str]] = {}
    for name, field in _ENV_REFERENCE.findall(_encoder.encode(document).decode()):
        fields.setdefault(name.upper().replace("-", "_"), set()).update([field] if field else [])
    return {
        variable: json.dumps(dict.fromkeys(sorted(wanted), _STAND_IN)) if wanted else _STAND_IN
        for variable, wanted in fields.items()
    }


def without_timestamps(entity: dict[str, Any]) -> dict[str, Any]:
    """``entity`` without ``created_at`` / ``updated_at``."""
    return {k: v for k, v in entity.items() if k not in TIMESTAMPS}


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two flat documents configure the same thing (timestamps aside)."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, list) and isinstance(other, list):
            if len(value) != len(other) or any(
                without_timestamps(x) != without_timestamps(y)
                for x, y in zip(value, other, strict=True)
            ):
                return False
        elif value != other:
            return False
    return True


def describe_errors(exc: ConfigError) -> list[str]:
    """The problems of ``exc`` for logs and ``/status``: field paths and messages with
    every quoted value masked, so a key put where a name belongs is never shown."""
    return [_QUOTED.sub("'...'", str(error)) for error in exc.errors]
