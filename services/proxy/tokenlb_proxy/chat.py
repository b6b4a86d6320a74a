"""Chat-completion requests: decode once, validate what routing needs, rewrite per target.

The body is parsed into a plain dict once (to rewrite it for the chosen target) and
converted into a small typed view (to validate it and estimate usage); msgspec does both
in microseconds. Invalid input is rejected here, before any Redis or upstream work.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from tokenlb_proxy.errors import InvalidRequest
from tokenlb_proxy.plan import UpstreamTarget

__all__ = ["ChatRequest", "Message", "parse_chat_request", "upstream_body"]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

#: Kong's messages for these two cases, kept so Kong users recognise them.
BAD_JSON = "content-type header does not match request body, or bad JSON formatting"
NO_PROMPTS = "request body doesn't contain valid prompts"


class Message(msgspec.Struct):
    """The parts of a chat message that matter for routing and token estimates."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    """A typed view of an OpenAI chat-completion body (unknown fields pass through)."""

    messages: list[Message]
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None


class ParsedRequest(msgspec.Struct):
    """The decoded body: the raw mapping to forward and the validated view."""

    raw: dict[str, Any]
    view: ChatRequest
    #: The body as the client sent it.
    body: bytes = b""

    def raw_text(self) -> str:
        """The client's body as text (for ``log_payloads``)."""
        return self.body.decode("utf-8", "replace")


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def parse_chat_request(body: bytes) -> ParsedRequest:
    """Decode and validate ``body``; raise ``InvalidRequest`` with OpenAI-style detail."""
    try:
        raw = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"{BAD_JSON}: {exc}") from exc
    except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 in a string
        raise InvalidRequest(f"{BAD_JSON}: invalid UTF-8 in a string ({exc.reason})") from exc
    except RecursionError as exc:  # msgspec's guard against the C stack running out
        raise InvalidRequest(f"{BAD_JSON}: JSON nested too deeply") from exc
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{BAD_JSON}: the body must be a JSON object")
    if not raw.get("messages"):
        raise InvalidRequest(
            f"{NO_PROMPTS}: 'messages' must be a non-empty array", param="messages"
        )
    try:
        view = msgspec.convert(raw, ChatRequest)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        param = where.rstrip("`").lstrip(".") or None
        raise InvalidRequest(
            f"Invalid value for '{param}': {message}" if param else message, param=param
        ) from exc
    for index, message_ in enumerate(view.messages):
        if message_.role in ("user", "system", "developer") and message_.content is None:
            raise InvalidRequest(
                f"'messages[{index}].content' is required for role '{message_.role}'",
                param=f"messages[{index}].content",
            )
    if view.n is not None and view.n < 1:
        raise InvalidRequest("'n' must be at least 1", param="n")
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(view, field)
        if value is not None and value < 1:
            raise InvalidRequest(f"'{field}' must be at least 1", param=field)
    return ParsedRequest(raw=raw, view=view, body=body)


def upstream_body(
    parsed: ParsedRequest, target: UpstreamTarget, *, stream: bool, want_usage: bool
) -> bytes:
    """The body to send to ``target``.

    The model becomes the target's; ``model.options`` fill in what the client left out
    (the client's temperature / top_p / max_tokens win, as Kong documents); streams ask
    for the final usage chunk so the balancer counts real tokens.
    """
    body = dict(parsed.raw)
    if target.model_name is not None:
        body["model"] = target.model_name
    options = target.options
    if (
        options.max_tokens is not None
        and "max_tokens" not in body
        and ("max_completion_tokens" not in body)
    ):
        body["max_tokens"] = options.max_tokens
    if options.temperature is not None and "temperature" not in body:
        body["temperature"] = options.temperature
    if options.top_p is not None and "top_p" not in body:
        body["top_p"] = options.top_p
    if stream:
        body["stream"] = True
        if want_usage:
            stream_options = dict(body.get("stream_options") or {})
            stream_options["include_usage"] = True
            body["stream_options"] = stream_options
    for name, value in target.auth_body:
        if not (target.allow_override and name in body):
            body[name] = value
    return _encoder.encode(body)
