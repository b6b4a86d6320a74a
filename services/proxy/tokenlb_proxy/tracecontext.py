"""W3C trace context: continue the client's trace through the gateway.

The proxy reads the client's ``traceparent`` (or starts a trace), gives the request its
own span id, returns ``traceparent`` pointing at that span, and forwards one that points
at the attempt's span to the upstream. The aggregator later exports those spans with
exactly these ids, so Jaeger shows the gateway inside the client's trace.
"""

from __future__ import annotations

import os
import re

__all__ = ["TraceContext", "new_span_id", "parse_traceparent"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16


class TraceContext:
    """The trace a request belongs to and the client's span that it continues."""

    __slots__ = ("parent_span_id", "sampled", "trace_id")

    def __init__(self, trace_id: str, parent_span_id: str | None, sampled: bool) -> None:
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.sampled = sampled

    def traceparent(self, span_id: str) -> str:
        """The header value that makes ``span_id`` the parent of whatever comes next."""
        return f"00-{self.trace_id}-{span_id}-{'01' if self.sampled else '00'}"


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(header: str | None) -> TraceContext:
    """The client's trace context, or a new sampled trace when the header is absent or bad."""
    if header:
        match = _TRACEPARENT.match(header.strip().lower())
        if match and match.group(1) != _INVALID_TRACE and match.group(2) != _INVALID_SPAN:
            flags = int(match.group(3), 16)
            return TraceContext(match.group(1), match.group(2), bool(flags & 1))
    return TraceContext(os.urandom(16).hex(), None, True)
