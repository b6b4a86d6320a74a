"""Kong's per-request AI log record, for targets with ``logging.log_statistics``.

One JSON line per request on the ``tokenlb.analytics`` logger, shaped like the
``ai.proxy`` namespace Kong's log plugins receive, so existing log pipelines keep
working. Payloads are included only with ``log_payloads``; credentials never are.
"""

from __future__ import annotations

import logging
import time

import msgspec

from tokenlb_proxy.chat import ParsedRequest
from tokenlb_proxy.plan import BalancerPlan, UpstreamTarget
from tokenlb_proxy.usage import TokenUsage

__all__ = ["log_statistics"]

analytics_log = logging.getLogger("tokenlb.analytics")
_encoder = msgspec.json.Encoder()


def log_statistics(
    plan: BalancerPlan,
    target: UpstreamTarget,
    parsed: ParsedRequest,
    usage: TokenUsage,
    response_model: str | None,
    started_at: float,
    first_byte_at: float | None,
    response_body: bytes | None,
) -> None:
    """Write the record for one finished request."""
    now = time.perf_counter()
    latency_ms = round((now - started_at) * 1000)
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    record: dict[str, object] = {
        "meta": {
            "plugin_id": plan.balancer_id,
            "provider_name": target.provider,
            "request_model": parsed.view.model,
            "response_model": response_model or target.model_name,
            "llm_latency": latency_ms,
        },
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": target.cost(prompt, completion),
            "time_per_token": round(latency_ms / completion, 3) if completion else 0,
            "time_to_first_token": (
                round((first_byte_at - started_at) * 1000) if first_byte_at is not None else None
            ),
        },
    }
    if target.log_payloads:
        payload: dict[str, object] = {"request": parsed.raw}
        if response_body is not None:
            payload["response"] = response_body.decode("utf-8", "replace")
        record["payload"] = payload
    analytics_log.info(_encoder.encode({"ai": {"proxy": record}}).decode())
