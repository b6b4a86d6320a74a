"""Process settings: the only module that reads the environment.

Each variable ``tokenlb proxy`` reads is listed once, with the setting it fills and a
line of help (``PROXY_ENVIRONMENT``, ``LOG_ENVIRONMENT``): ``tokenlb proxy --help`` prints
these lists, and a test checks they hold exactly the variables the readers below read.
A value that does not fit its setting is a ``SettingsError`` naming the variable, never
a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, NamedTuple, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec
import msgspec.structs

__all__ = [
    "LOG_ENVIRONMENT",
    "PROXY_ENVIRONMENT",
    "EnvVariable",
    "LogSettings",
    "ProxySettings",
    "SettingsError",
    "describe_environment",
    "log_settings_from_env",
    "read_environment",
    "redact_url",
    "redis_url_from_env",
    "settings_from_env",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["text", "json"]
#: Seconds that must be more than zero (a zero timeout or interval would spin or fail).
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class SettingsError(ValueError):
    """An environment variable holds a value tokenlb cannot use."""


class EnvVariable(NamedTuple):
    """An environment variable, the settings field it fills, and what it is for."""

    name: str
    field: str
    help: str


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
    announce_interval_s: Seconds = 10.0
    #: Connect and read timeout of Redis calls, seconds: the longest a request waits on a
    #: Redis that stopped answering before this replica falls back to local counters.
    redis_timeout_s: Seconds = 1.0
    #: Seconds between two checks of the config version in Redis, the fallback for a
    #: missed change announcement (and the only way on a Redis Cluster).
    config_poll_interval_s: Seconds = 0.5
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


#: What ``tokenlb proxy`` reads besides ``LOG_ENVIRONMENT``; a flag given on the command
#: line wins over its variable.
PROXY_ENVIRONMENT: tuple[EnvVariable, ...] = (
    EnvVariable("TOKENLB_CONFIG", "config_path", "the config file, when --config is not given"),
    EnvVariable(
        "TOKENLB_REDIS_URL", "redis_url", "the shared Redis, when --redis-url is not given"
    ),
    EnvVariable(
        "TOKENLB_ADMIN_TOKEN",
        "admin_token",
        "the Admin API token clients send in Kong-Admin-Token; required when the admin "
        "port is not on loopback",
    ),
    EnvVariable(
        "TOKENLB_USAGE_EVENTS",
        "usage_events",
        "false (or 0) appends no usage events, as --no-usage-events",
    ),
    EnvVariable(
        "TOKENLB_REDIS_TIMEOUT_S",
        "redis_timeout_s",
        "seconds a Redis call may take before the replica falls back to local counters",
    ),
    EnvVariable(
        "TOKENLB_CONFIG_POLL_INTERVAL_S",
        "config_poll_interval_s",
        "seconds between two checks of the config version in Redis",
    ),
    EnvVariable(
        "TOKENLB_ANNOUNCE_INTERVAL_S",
        "announce_interval_s",
        "seconds between two announcements of this replica's balancers to Redis",
    ),
)
#: How every long-running ``tokenlb`` command logs.
LOG_ENVIRONMENT: tuple[EnvVariable, ...] = (
    EnvVariable("TOKENLB_LOG_LEVEL", "level", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    EnvVariable("TOKENLB_LOG_FORMAT", "format", "text, or json for one JSON object a line"),
)


def settings_from_env(
    environ: Mapping[str, str] | None = None, **overrides: object
) -> ProxySettings:
    """Settings from ``TOKENLB_*`` variables, with explicit (CLI) values taking precedence;
    ``SettingsError`` names a variable whose value does not fit."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {
        "log_level": log_settings_from_env(env).level,
        **read_environment(env, PROXY_ENVIRONMENT, ProxySettings),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, ProxySettings)
    except msgspec.ValidationError as exc:  # an explicit value out of range
        raise SettingsError(str(exc)) from None


def read_environment(
    env: Mapping[str, str], variables: Sequence[EnvVariable], struct: type[msgspec.Struct]
) -> dict[str, object]:
    """The fields of ``struct`` the set (non-empty) ``variables`` give, each converted to
    its field's type; ``SettingsError`` names the variable and the value that does not
    fit, so a typo in a deployment is one line, not a traceback from deep in start-up."""
    types = {field.name: field.type for field in msgspec.structs.fields(struct)}
    values: dict[str, object] = {}
    for variable in variables:
        raw = env.get(variable.name, "").strip()
        if not raw:
            continue
        wanted = types[variable.field]
        try:
            values[variable.field] = msgspec.convert(raw, wanted, strict=False)
        except msgspec.ValidationError as exc:
            if wanted is bool:
                expected = "expected true or false (or 1 or 0)"
            else:
                expected = str(exc).replace("Expected", "expected", 1).replace(", got `str`", "")
            raise SettingsError(f"{variable.name}={raw!r}: {expected}") from None
    return values


def redis_url_from_env(
    explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The Redis URL a command uses: ``explicit`` (``--redis-url``), else
    ``TOKENLB_REDIS_URL``; None when neither is set."""
    env = os.environ if environ is None else environ
    return explicit or env.get("TOKENLB_REDIS_URL") or None


def describe_environment(
    variables: Sequence[EnvVariable], struct: type[msgspec.Struct]
) -> list[tuple[str, str]]:
    """(variable, help) for a command's ``--help``, with the field's default when it has
    one worth showing."""
    defaults = {field.name: field.default for field in msgspec.structs.fields(struct)}
    described = []
    for variable in variables:
        default = defaults.get(variable.field)
        shown = default not in (None, "", msgspec.NODEFAULT)
        text = f"{variable.help} (default {_shown(default)})" if shown else variable.help
        described.append((variable.name, text))
    return described


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


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
