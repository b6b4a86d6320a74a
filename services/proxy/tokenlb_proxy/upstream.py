"""Calling one target: headers, auth injection, and the SSE relay.

The relay passes each upstream read through as soon as it holds whole SSE events, so
streaming stays chunk by chunk. It watches for the final usage chunk, which tokenlb asks
for even when the client did not, and hides it from clients that did not ask.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import httpx
import msgspec

from tokenlb_proxy.plan import UpstreamTarget
from tokenlb_proxy.usage import TokenUsage, usage_from_body

__all__ = ["StreamState", "relay_stream", "upstream_headers", "upstream_params"]

log = logging.getLogger(__name__)

#: Client headers forwarded to the upstream; everything else stays at the gateway.
FORWARDED_HEADERS = ("accept", "user-agent", "traceparent", "tracestate", "x-request-id")
#: Client credentials, forwarded only to a target that has no auth of its own.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "api-key")
#: Upstream response headers passed back to the client.
RETURNED_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def upstream_headers(target: UpstreamTarget, client: Mapping[str, str]) -> dict[str, str]:
    """Headers for the upstream call: content type, a few passthroughs, and the target's auth."""
    headers = {"content-type": "application/json"}
    for name in FORWARDED_HEADERS:
        value = client.get(name)
        if value is not None:
            headers[name] = value
    if not (target.auth_headers or target.auth_query or target.auth_body):
        for name in CLIENT_CREDENTIAL_HEADERS:
            value = client.get(name)
            if value is not None:
                headers[name] = value
    for name, value in target.auth_headers:
        client_value = client.get(name)
        headers[name] = client_value if target.allow_override and client_value else value
    return headers


def upstream_params(target: UpstreamTarget, client_query: Mapping[str, str]) -> dict[str, str]:
    """Query parameters for the upstream call: only the target's auth parameter, if any."""
    params: dict[str, str] = {}
    for name, value in target.auth_query:
        client_value = client_query.get(name)
        params[name] = client_value if target.allow_override and client_value else value
    return params


def returned_headers(response: httpx.Response) -> dict[str, str]:
    """The upstream headers worth passing back to the client."""
    return {name: response.headers[name] for name in RETURNED_HEADERS if name in response.headers}


@dataclass(slots=True)
class StreamState:
    """What the relay learned from a stream, read when it ends."""

    usage: TokenUsage | None = None
    model: str | None = None
    #: Raw content events, kept only to count tokens if the stream never reports usage.
    content_events: list[bytes] = field(default_factory=list)
    first_byte_at: float | None = None
    completed: bool = False
    error: str | None = None


class _DeltaView(msgspec.Struct):
    content: str | None = None


class _ChoiceView(msgspec.Struct):
    delta: _DeltaView | None = None


class _ChunkView(msgspec.Struct):
    choices: list[_ChoiceView] = []


_chunk_decoder = msgspec.json.Decoder(_ChunkView)


def streamed_text(events: list[bytes]) -> list[str]:
    """The content deltas of raw SSE ``data:`` payloads."""
    texts: list[str] = []
    for payload in events:
        try:
            chunk = _chunk_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        texts.extend(c.delta.content for c in chunk.choices if c.delta and c.delta.content)
    return texts


async def relay_stream(
    response: httpx.Response,
    state: StreamState,
    *,
    show_usage: bool,
    clock: Callable[[], float],
    on_finish: Callable[[], None],
) -> AsyncIterator[bytes]:
    """Yield the upstream SSE stream event-complete, taking usage out of it on the way."""
    pending = b""
    try:
        async for data in response.aiter_bytes():
            if state.first_byte_at is None:
                state.first_byte_at = clock()
            pending += data
            if b"\n\n" not in pending:
                continue
            *events, pending = pending.split(b"\n\n")
            out = [event for event in events if _keep_event(event, state, show_usage)]
            if out:
                yield b"\n\n".join(out) + b"\n\n"
        if pending.strip() and _keep_event(pending, state, show_usage):
            yield pending
        state.completed = True
    except httpx.HTTPError as exc:
        # Headers are gone already: the client gets a truncated stream, the usage so far
        # is still counted.
        state.error = type(exc).__name__
        log.warning("upstream stream broke after the first byte: %s", state.error)
    finally:
        await response.aclose()
        on_finish()


def _keep_event(event: bytes, state: StreamState, show_usage: bool) -> bool:
    """Record what ``event`` says; False when it must not reach the client."""
    payload = _data_payload(event)
    if payload is None or payload == b"[DONE]":
        return True
    if b'"usage"' in payload and not (b'"usage":null' in payload or b'"usage": null' in payload):
        usage, model = usage_from_body(payload)
        if usage is not None:
            state.usage = usage
            state.model = model or state.model
            if b'"choices":[]' in payload or b'"choices": []' in payload:
                return show_usage
            return True
    if b'"content"' in payload:
        state.content_events.append(payload)
    return True


def _data_payload(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None
