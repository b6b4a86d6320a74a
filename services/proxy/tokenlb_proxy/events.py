"""The usage event: one per upstream attempt, appended to the balancer's Redis Stream by
``lua/record_usage.lua`` in the same call that settles the attempt's usage.

The aggregator turns events into per-minute rollups, Kong-style log lines and
OpenTelemetry spans, so everything it needs travels here; the proxy never waits for any
of it. One JSON field per stream entry keeps the Lua side a plain pass-through.
"""

from __future__ import annotations

import msgspec

__all__ = ["EVENT_FIELD", "UsageEvent", "decode_event", "encode_event"]

#: The stream entry's only field.
EVENT_FIELD = "e"


class UsageEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What happened on one attempt of one request. Never carries a credential."""

    balancer: str
    target: str
    #: ``provider/model`` of the target, as X-Kong-LLM-Model shows it.
    target_label: str
    provider: str
    request_model: str | None = None
    response_model: str | None = None
    algorithm: str
    strategy: str
    #: The target's decayed usage per unit of weight when it was chosen.
    score: float = 0.0
    #: 0 for the first try; the number of retries before this attempt.
    attempt: int = 0
    #: The attempt that answered the client (the others failed over).
    final: bool = True
    #: Upstream HTTP status; 0 when no response arrived (connection error, timeout).
    status: int = 0
    #: Why the attempt failed: "error", "timeout", "invalid", "http_<status>"; "" if it did not.
    error: str = ""
    stream: bool = False
    #: Wall-clock times, milliseconds since the Unix epoch (float: sub-ms precision).
    start_ms: float
    end_ms: float
    #: Time from sending to the upstream until its whole answer (or the failure).
    upstream_ms: float = 0.0
    #: Time to the first streamed byte; None for non-streaming answers.
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    #: W3C trace context. Every attempt is a span (``span_id``) under the gateway's
    #: request span (``request_span_id``), whose parent is the client's span when the
    #: client sent a ``traceparent``. The final attempt also describes the request span,
    #: which starts at ``request_start_ms``.
    trace_id: str
    span_id: str
    request_span_id: str
    client_span_id: str | None = None
    request_start_ms: float
    log_statistics: bool = False
    #: Request and response bodies, only when the target has ``log_payloads``.
    request_payload: str | None = None
    response_payload: str | None = None
    #: Chosen on the replica's local counters while Redis was unreachable; the event was
    #: appended when Redis came back (see store/resilient.py).
    degraded: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.error)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


def encode_event(event: UsageEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> UsageEvent:
    """Raises ``msgspec.DecodeError`` / ``ValidationError`` for an entry that is not one."""
    return _decoder.decode(data)
