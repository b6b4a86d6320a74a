"""The plugins tokenlb implements, by name, and their configs with Kong's defaults filled in.

The Admin API stores and answers plugin configs the way Kong does: every field present, a
default wherever the request left one out (``plugin_config_with_defaults``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.config.key_auth import KeyAuthConfig
from tokenlb_proxy.config.loader import schema_errors
from tokenlb_proxy.config.plugin import AiProxyAdvancedConfig
from tokenlb_proxy.config.support import NOT_SUPPORTED

__all__ = ["AI_PROXY_ADVANCED", "KEY_AUTH", "PLUGIN_SCHEMAS", "plugin_config_with_defaults"]

AI_PROXY_ADVANCED = "ai-proxy-advanced"
KEY_AUTH = "key-auth"
#: Plugin name -> the schema of its ``config``.
PLUGIN_SCHEMAS: dict[str, type[msgspec.Struct]] = {
    AI_PROXY_ADVANCED: AiProxyAdvancedConfig,
    KEY_AUTH: KeyAuthConfig,
}


def plugin_config_with_defaults(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` decoded by plugin ``name``'s schema, every default filled in, as plain
    JSON-able data. Secret references stay references (they are strings to the schema).

    Raises ``ConfigError`` with paths under ``config`` (or ``name`` for an unknown plugin).
    Only the schema is checked here; ``compile_gateway`` checks the rest (what tokenlb
    supports, references between entities).
    """
    schema = PLUGIN_SCHEMAS.get(name)
    if schema is None:
        raise ConfigError([FieldError("name", f"plugin {name!r} is {NOT_SUPPORTED}")])
    try:
        decoded = msgspec.convert(config, schema)
    except msgspec.ValidationError as exc:
        raise ConfigError(schema_errors(config, schema, "config")) from exc
    # Through JSON rather than to_builtins, which keeps tuples: the result is what a JSON
    # document holds (lists), equal to itself after a round trip through the repository.
    result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(decoded))
    return result
