"""``GET`` and ``POST /config``: the whole config at once, as DB-less Kong takes it.

DB-less Kong is configured by posting a kong.yaml to its Admin API (``curl
:8001/config -F config=@kong.yaml``, or the file as the body). Here that replaces the
fleet's stored document, exactly as ``tokenlb config sync`` does: the same parser and
validation as a ``--config`` file, creation times kept for the entities that stay, one
compare-and-set, and every replica follows within a poll interval. ``GET /config``
returns the stored document as kong.yaml text (vault references stay references).

The text comes from a ``config`` field (multipart, form or JSON body, as Kong reads it)
or is the body itself (YAML or JSON). decK's ``${{ env "DECK_..." }}`` placeholders are
not filled in, as Kong does not fill them: decK does that on the client side.
"""

from __future__ import annotations

import email.parser
import email.policy
import time
from typing import Any

import msgspec
import yaml

from tokenlb_proxy.admin import crud
from tokenlb_proxy.admin.forms import FORM, FormError, media_type, parse_form
from tokenlb_proxy.admin.kong_errors import (
    AdminError,
    invalid_declarative,
    invalid_form,
    invalid_json,
)
from tokenlb_proxy.config import ConfigError, parse_document
from tokenlb_proxy.config.entities import KINDS, nest, normalize
from tokenlb_proxy.control.diff import replace_document

__all__ = ["config_text", "declarative_error", "dump", "replace"]


def config_text(raw: bytes, content_type: str | None) -> str:
    """The kong.yaml (or JSON) text a ``POST /config`` carries."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return _multipart_field(raw, content_type or "", "config")
    if kind == FORM:
        try:
            value = parse_form(raw).get("config")
        except FormError as exc:
            raise invalid_form(str(exc)) from None
        if not isinstance(value, str):
            raise invalid_declarative("expected a 'config' field")
        return value
    text = raw.decode("utf-8", "replace")
    if kind == "application/json":
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise invalid_json() from None
        if isinstance(body, dict) and isinstance(body.get("config"), str):
            return str(body["config"])
    return text


def replace(document: dict[str, Any], text: str, now: int | None = None) -> dict[str, Any]:
    """Make ``document`` the config ``text`` describes; returns the entities it now holds
    by kind and id, as Kong answers. ``ConfigError`` when ``text`` is not a valid config
    (the manager's compile then checks what this replica can serve)."""
    target = normalize(parse_document(text, {}))
    replace_document(document, target, int(time.time()) if now is None else now)
    return {
        kind: {entity["id"]: crud.present(kind, entity) for entity in document.get(kind) or ()}
        for kind in KINDS
    }


def dump(document: dict[str, Any]) -> dict[str, str]:
    """``GET /config``'s answer: the stored document as kong.yaml text."""
    return {"config": yaml.safe_dump(nest(document), sort_keys=False, allow_unicode=True)}


def declarative_error(exc: ConfigError) -> AdminError:
    """Kong's answer to a config it cannot load, with every problem's path."""
    return invalid_declarative(
        "; ".join(f"{e.path}: {e.message}" if e.path else e.message for e in exc.errors),
        {e.path or "@entity": e.message for e in exc.errors},
    )


def _multipart_field(raw: bytes, content_type: str, name: str) -> str:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode("utf-8", "replace")
    raise invalid_declarative(f"expected a '{name}' field")
