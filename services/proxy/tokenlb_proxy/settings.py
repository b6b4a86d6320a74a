"""Process settings: the only module that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = [
    "LogSettings",
    "ProxySettings",
    "SettingsError",
    "log_settings_from_env",
    "redact_url",
    "settings_from_env",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["text", "json"]


class SettingsError(ValueError):
    """An environment variable holds a value tokenlb cannot use."""


class LogSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How a ``tokenlb`` process logs (``TOKENLB_LOG_LEVEL``, ``TOKENLB_LOG_FORMAT``)."""

    level: LogLevel = "INFO"
    format: LogFormat = "text"


class ProxySettings(msgspec.Struct, frozen=True, kw_only=True):
    """How one proxy replica runs."""

    #: The kong.yaml to serve ("": none). With Redis it only seeds an empty Redis: the
    #: document stored there is the fleet's config.
    config_path: str = ""
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    admin_host: str = "127.0.0.1"
    admin_port: int = 8001
    #: Upper bound on pooled upstream connections of this replica.
    max_upstream_connections: int = 1000
    log_level: LogLevel = "INFO"
    #: Append a usage event per attempt to Redis for the aggregators.
    usage_events: bool = True
    #: Seconds between re-announcements of this replica's balancers to Redis.
    announce_interval_s: float = 10.0
    #: Connect and read timeout of Redis calls, seconds: the longest a request waits on a
    #: Redis that stopped answering before this replica falls back to local counters.
    redis_timeout_s: float = 1.0
    #: Seconds between two checks of the config version in Redis, the fallback for a
    #: missed change announcement (and the only way on a Redis Cluster).
    config_poll_interval_s: float = 0.5
    #: The Admin API token (``TOKENLB_ADMIN_TOKEN``; never a command-line flag, which
    #: every user of the machine could read in ``ps``). None: the API is open, which
    #: ``tokenlb proxy`` allows only on a loopback admin address.
    admin_token: str | None = None

    def __repr__(self) -> str:
        # Settings may be logged or shown in a traceback: never with the admin token.
        shown = [
            f"{name}={'<redacted>' if name == 'admin_token' and value else value!r}"
            for name, value in ((f, getattr(self, f)) for f in self.__struct_fields__)
        ]
        return f"ProxySettings({', '.join(shown)})"


def settings_from_env(
    environ: Mapping[str, str] | None = None, **overrides: object
) -> ProxySettings:
    """Settings from ``TOKENLB_*`` variables, with explicit (CLI) values taking precedence."""
    env = os.environ if environ is None else environ
    log = log_settings_from_env(env)
    values: dict[str, object] = {
        "config_path": env.get("TOKENLB_CONFIG", ""),
        "redis_url": env.get("TOKENLB_REDIS_URL") or None,
        "log_level": log.level,
        "usage_events": env.get("TOKENLB_USAGE_EVENTS", "1").lower() not in ("0", "false", "no"),
        "announce_interval_s": float(env.get("TOKENLB_ANNOUNCE_INTERVAL_S", "10")),
        "redis_timeout_s": float(env.get("TOKENLB_REDIS_TIMEOUT_S", "1")),
        "config_poll_interval_s": float(env.get("TOKENLB_CONFIG_POLL_INTERVAL_S", "0.5")),
        "admin_token": env.get("TOKENLB_ADMIN_TOKEN") or None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(values, ProxySettings)


def log_settings_from_env(
    environ: Mapping[str, str] | None = None, default_level: str = "INFO"
) -> LogSettings:
    """``TOKENLB_LOG_LEVEL`` (any case) and ``TOKENLB_LOG_FORMAT`` (``text`` or ``json``);
    SettingsError names the variable and the values it accepts."""
    env = os.environ if environ is None else environ
    level = env.get("TOKENLB_LOG_LEVEL", "").strip().upper() or default_level
    fmt = env.get("TOKENLB_LOG_FORMAT", "").strip().lower() or "text"
    if level not in get_args(LogLevel):
        levels = ", ".join(get_args(LogLevel))
        raise SettingsError(f"TOKENLB_LOG_LEVEL={level!r}: use one of {levels}")
    if fmt not in get_args(LogFormat):
        raise SettingsError(f"TOKENLB_LOG_FORMAT={fmt!r}: use text or json")
    return msgspec.convert({"level": level, "format": fmt}, LogSettings)


def redact_url(url: str) -> str:
    """``url`` without its password, for status output and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))
