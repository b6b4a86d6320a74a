"""Process settings: the only module that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = ["ProxySettings", "redact_url", "settings_from_env"]


class ProxySettings(msgspec.Struct, frozen=True, kw_only=True):
    """How one proxy replica runs."""

    config_path: str
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    admin_host: str = "127.0.0.1"
    admin_port: int = 8001
    #: Upper bound on pooled upstream connections of this replica.
    max_upstream_connections: int = 1000
    log_level: str = "INFO"
    #: Append a usage event per attempt to Redis for the aggregators.
    usage_events: bool = True
    #: Seconds between re-announcements of this replica's balancers to Redis.
    announce_interval_s: float = 10.0
    #: Connect and read timeout of Redis calls, seconds: the longest a request waits on a
    #: Redis that stopped answering before this replica falls back to local counters.
    redis_timeout_s: float = 1.0


def settings_from_env(
    environ: Mapping[str, str] | None = None, **overrides: object
) -> ProxySettings:
    """Settings from ``TOKENLB_*`` variables, with explicit (CLI) values taking precedence."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {
        "config_path": env.get("TOKENLB_CONFIG", ""),
        "redis_url": env.get("TOKENLB_REDIS_URL") or None,
        "log_level": env.get("TOKENLB_LOG_LEVEL", "INFO").upper(),
        "usage_events": env.get("TOKENLB_USAGE_EVENTS", "1").lower() not in ("0", "false", "no"),
        "announce_interval_s": float(env.get("TOKENLB_ANNOUNCE_INTERVAL_S", "10")),
        "redis_timeout_s": float(env.get("TOKENLB_REDIS_TIMEOUT_S", "1")),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(values, ProxySettings)


def redact_url(url: str) -> str:
    """``url`` without its password, for status output and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))
