"""Configuration: Kong's schema, decK file forms, validation and compilation."""

from __future__ import annotations

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
    """Read, validate and compile the config file at ``path``."""
    return compile_gateway(load_document(path))
