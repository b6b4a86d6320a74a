"""Configuration: Kong's schema, decK file forms, validation and compilation."""

from __future__ import annotations

import os

from tokenlb_proxy.config.compile import compile_gateway
from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.config.loader import load_document, parse_document
from tokenlb_proxy.plan import Gateway

__all__ = [
    "ConfigError",
    "FieldError",
    "compile_gateway",
    "load_config",
    "load_document",
    "parse_document",
]


def load_config(path: str) -> Gateway:
    """Read, validate and compile the config file at ``path``.

    Error messages never show the value of a decK variable: a placeholder put in the wrong
    field (an enum, say) would otherwise print the secret in the error.
    """
    try:
        return compile_gateway(load_document(path))
    except ConfigError as exc:
        secrets = (v for k, v in os.environ.items() if k.startswith("DECK_"))
        raise exc.redacted(secrets) from None
