"""Aggregator settings: the only place the aggregator reads its environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import msgspec

from tokenlb_proxy.settings import EnvVariable, SettingsError, read_environment

__all__ = ["AGGREGATOR_ENVIRONMENT", "AggregatorSettings", "aggregator_settings"]


class AggregatorSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How one aggregator runs. Times in milliseconds unless the name says otherwise."""

    redis_url: str
    #: Consumer name in the group; unique per aggregator process.
    name: str
    group: str = "tokenlb-aggregators"
    #: Events read per stream per call.
    batch_size: int = 500
    #: Sleep when every stream was empty.
    idle_sleep_ms: int = 50
    #: Entries pending this long on a consumer are taken over (its aggregator died).
    claim_idle_ms: int = 15_000
    #: Seconds a per-minute rollup is kept.
    rollup_retention_s: int = 7 * 86_400
    #: How often the decay epoch is rolled, and after how many half-lives.
    roll_interval_ms: int = 5_000
    roll_min_half_lives: float = 1.0
    #: How often acknowledged entries are trimmed from the streams.
    trim_interval_ms: int = 2_000
    #: How often the list of balancers is re-read.
    discover_interval_ms: int = 2_000
    heartbeat_interval_ms: int = 2_000
    heartbeat_ttl_s: int = 10
    #: Where Kong's log lines go: "stdout", "stderr", "none" or a file path.
    log_sink: str = "stdout"


#: The variables the aggregator reads: the proxy's Redis URL and log sink, then every
#: setting as ``TOKENLB_AGGREGATOR_<NAME>`` (e.g. ``..._CLAIM_IDLE_MS``), which wins.
AGGREGATOR_ENVIRONMENT: tuple[EnvVariable, ...] = (
    EnvVariable("TOKENLB_REDIS_URL", "redis_url", "the proxies' Redis"),
    EnvVariable("TOKENLB_LOG_SINK", "log_sink", "where Kong's log lines go"),
    *(
        EnvVariable(f"TOKENLB_AGGREGATOR_{name.upper()}", name, name.replace("_", " "))
        for name in AggregatorSettings.__struct_fields__
    ),
)


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def aggregator_settings(
    environ: Mapping[str, str] | None = None, **overrides: object
) -> AggregatorSettings:
    """Settings from ``TOKENLB_*`` variables; explicit (CLI) values win. ``SettingsError``
    names a variable whose value does not fit."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {
        "redis_url": "",
        "name": _default_name(),
        **read_environment(env, AGGREGATOR_ENVIRONMENT, AggregatorSettings),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, AggregatorSettings)
    except msgspec.ValidationError as exc:  # an explicit value out of range
        raise SettingsError(str(exc)) from None
