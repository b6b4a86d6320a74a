"""Kong's per-request AI log record, for targets with ``logging.log_statistics``.

One JSON line per successful request, shaped like the ``ai.proxy`` namespace Kong's log
plugins receive, so existing log pipelines keep working. With Redis the aggregator writes
it from the usage event (to a configurable sink); on the embedded store the proxy writes
it itself on the ``tokenlb.analytics`` logger (stdout). Payloads only with
``log_payloads``; credentials never.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from tokenlb_proxy.events import UsageEvent

__all__ = ["kong_log_line", "kong_log_record", "write_kong_log"]

analytics_log = logging.getLogger("tokenlb.analytics")
_encoder = msgspec.json.Encoder()


def kong_log_record(event: UsageEvent) -> dict[str, Any]:
    """``{"ai": {"proxy": {"meta": ..., "usage": ..., "payload"?: ...}}}`` for one request."""
    latency_ms = round(event.upstream_ms)
    completion = event.completion_tokens
    record: dict[str, Any] = {
        "meta": {
            "plugin_id": event.balancer,
            "provider_name": event.provider,
            "request_model": event.request_model,
            "response_model": event.response_model,
            "llm_latency": latency_ms,
        },
        "usage": {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": event.prompt_tokens + completion,
            "cost": event.cost,
            "time_per_token": round(event.upstream_ms / completion, 3) if completion else 0,
            "time_to_first_token": round(event.ttft_ms) if event.ttft_ms is not None else None,
        },
    }
    if event.request_payload is not None or event.response_payload is not None:
        record["payload"] = {
            "request": event.request_payload,
            "response": event.response_payload,
        }
    return {"ai": {"proxy": record}}


def kong_log_line(event: UsageEvent) -> bytes:
    return _encoder.encode(kong_log_record(event))


def write_kong_log(event: UsageEvent) -> None:
    analytics_log.info(kong_log_line(event).decode())
