"""OpenTelemetry spans rebuilt from usage events, with the proxy's own ids and times.

The proxy never talks to a collector: it put the trace id, its span ids and the real
timestamps in the event, and this module turns each event into a finished span and hands
it to a BatchSpanProcessor with the OTLP exporter configured by the standard
``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables. Every attempt is a CLIENT
span ``chat <model>`` under the gateway's SERVER span for the request, whose parent is the
client's span. Attributes follow the OTel GenAI semantic conventions, plus ``tokenlb.*``.
No credential ever reaches an event, and prompt text only with ``log_payloads``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from tokenlb_proxy import __version__
from tokenlb_proxy.events import UsageEvent

__all__ = ["SpanEmitter", "event_spans", "exporter_from_env"]

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("tokenlb", __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def exporter_from_env(environ: Mapping[str, str] | None = None) -> SpanExporter | None:
    """The exporter the standard variables ask for, or None when tracing is not set up.

    ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``) picks it; without it,
    OTLP/HTTP is used when an ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is given.
    """
    env = os.environ if environ is None else environ
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if choice == "none" or (not choice and not endpoint):
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


class SpanEmitter:
    """Batches spans to an exporter; never blocks the aggregator's loop on the network."""

    def __init__(self, exporter: SpanExporter, resource: Resource | None = None) -> None:
        self._processor: SpanProcessor = BatchSpanProcessor(exporter)
        self._resource = resource or Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "tokenlb")}
        )

    def emit(self, event: UsageEvent, upstream_url: str | None = None) -> None:
        for span in event_spans(event, self._resource, upstream_url):
            self._processor.on_end(span)

    def flush(self, timeout_ms: int = 30_000) -> None:
        self._processor.force_flush(timeout_ms)

    def close(self) -> None:
        self._processor.shutdown()


def event_spans(
    event: UsageEvent, resource: Resource, upstream_url: str | None = None
) -> list[ReadableSpan]:
    """The attempt's span, and for the request's final attempt the request span too."""
    trace_id = int(event.trace_id, 16)
    request_context = SpanContext(trace_id, int(event.request_span_id, 16), False, _SAMPLED)
    model = event.target_label.split("/", 1)[-1]
    attempt_attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": event.provider,
        "gen_ai.system": event.provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": event.prompt_tokens,
        "gen_ai.usage.output_tokens": event.completion_tokens,
        "tokenlb.balancer": event.balancer,
        "tokenlb.target": event.target_label,
        "tokenlb.target_id": event.target,
        "tokenlb.algorithm": event.algorithm,
        "tokenlb.tokens_count_strategy": event.strategy,
        "tokenlb.usage_score": event.score,
        "tokenlb.retries": event.attempt,
        "tokenlb.cost": event.cost,
        "tokenlb.upstream_latency_ms": round(event.upstream_ms, 3),
        "tokenlb.stream": event.stream,
    }
    if event.response_model:
        attempt_attributes["gen_ai.response.model"] = event.response_model
    if event.ttft_ms is not None:
        attempt_attributes["tokenlb.time_to_first_token_ms"] = round(event.ttft_ms, 3)
    if event.status:
        attempt_attributes["http.response.status_code"] = event.status
    if event.error:
        attempt_attributes["error.type"] = event.error
    if event.degraded:
        attempt_attributes["tokenlb.degraded"] = True
    if upstream_url:
        parts = urlsplit(upstream_url)
        attempt_attributes["server.address"] = parts.hostname or ""
        if parts.port:
            attempt_attributes["server.port"] = parts.port
    if event.request_payload is not None:
        attempt_attributes["gen_ai.input.messages"] = event.request_payload
    if event.response_payload is not None:
        attempt_attributes["gen_ai.output.messages"] = event.response_payload
    status = Status(StatusCode.ERROR, event.error) if event.error else Status(StatusCode.UNSET)
    spans = [
        ReadableSpan(
            name=f"chat {model}",
            context=SpanContext(trace_id, int(event.span_id, 16), False, _SAMPLED),
            parent=request_context,
            resource=resource,
            attributes=attempt_attributes,
            kind=SpanKind.CLIENT,
            status=status,
            start_time=_ns(event.start_ms),
            end_time=_ns(event.end_ms),
            instrumentation_scope=SCOPE,
        )
    ]
    if event.final:
        parent = (
            SpanContext(trace_id, int(event.client_span_id, 16), True, _SAMPLED)
            if event.client_span_id
            else None
        )
        request_attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": event.provider,
            "gen_ai.system": event.provider,
            "gen_ai.usage.input_tokens": event.prompt_tokens,
            "gen_ai.usage.output_tokens": event.completion_tokens,
            "tokenlb.balancer": event.balancer,
            "tokenlb.target": event.target_label,
            "tokenlb.algorithm": event.algorithm,
            "tokenlb.usage_score": event.score,
            "tokenlb.retries": event.attempt,
            "tokenlb.cost": event.cost,
        }
        if event.request_model:
            request_attributes["gen_ai.request.model"] = event.request_model
        if event.response_model:
            request_attributes["gen_ai.response.model"] = event.response_model
        if event.error:
            request_attributes["error.type"] = event.error
        if event.degraded:
            request_attributes["tokenlb.degraded"] = True
        spans.append(
            ReadableSpan(
                name="tokenlb chat",
                context=request_context,
                parent=parent,
                resource=resource,
                attributes=request_attributes,
                kind=SpanKind.SERVER,
                status=status,
                start_time=_ns(event.request_start_ms),
                end_time=_ns(event.end_ms),
                instrumentation_scope=SCOPE,
            )
        )
    return spans


def _ns(wall_ms: float) -> int:
    return int(wall_ms * 1_000_000)
