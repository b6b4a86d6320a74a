"""``tokenlb mock-upstream``: a fake OpenAI-compatible chat completion server.

Demos, tests and benchmarks need an upstream that answers like OpenAI, with usage that is
deterministic (so a balancer's token accounting can be checked exactly), failures and
hangs on demand, and a record of what it received. It is hand-written ASGI with msgspec
rather than a framework because it is the benchmark floor: every microsecond it spends
is charged to the proxy under test.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import uvicorn

from tokenlb_proxy.listen import CannotListen, bind_all, format_address
from tokenlb_proxy.mock_state import (
    AssistantMessage,
    ChatRequest,
    Choice,
    Chunk,
    ChunkChoice,
    Completion,
    ControlUpdate,
    Delta,
    ErrorBody,
    ErrorDetail,
    MockSettings,
    MockState,
    Usage,
    add_mock_arguments,
    prompt_profile,
    settings_from_args,
)
from tokenlb_proxy.tokens import get_counter

__all__ = [
    "ASGIApp",
    "MockSettings",
    "add_mock_arguments",
    "create_mock_app",
    "main",
    "run_mock_upstream",
    "settings_from_args",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: A hung request is answered after this long if the client has not given up before.
HANG_SECONDS = 600.0
#: What a misconfigured upstream (a login page, a proxy's error page) answers with.
GARBAGE_PAGE = b"<html><body>Service temporarily moved</body></html>"
#: The content is "tok tok tok ...": one cl100k token per word, so a proxy that counts
#: streamed content itself arrives at the same completion_tokens as the usage we report.
WORD = " tok"


class UpstreamError(Exception):
    """An OpenAI-style error response; raised anywhere in a handler, sent by the router."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(ErrorDetail(message, type_, param, code))
        self.headers = headers or []


_encode = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(ChatRequest).decode
_decode_control = msgspec.json.Decoder(ControlUpdate).decode
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"


# --- the application ------------------------------------------------------------------


class MockUpstream:
    """The ASGI callable; ``state`` is exposed for in-process use."""

    def __init__(self, settings: MockSettings) -> None:
        # Load the tokenizer now (~0.1 s, far more on a busy machine), not in the first
        # request: a first answer that much slower than the rest is an outlier that
        # lowest-latency balancers would remember for several half-lives.
        get_counter()
        self.state = MockState(settings)
        self._routes: dict[tuple[str, str], Callable[[bytes, bytes], object]] = {
            ("GET", "/health"): lambda _q, _b: {"status": "ok"},
            ("GET", "/mock/stats"): lambda _q, _b: self.state.stats,
            ("GET", "/mock/requests"): self._recent_requests,
            ("GET", "/mock/control"): lambda _q, _b: self.state.control,
            ("POST", "/mock/control"): self._update_control,
            ("POST", "/mock/reset"): self._reset,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if method == "POST" and path.endswith("/chat/completions"):
                await self._chat(scope, receive, send)
                return
            route = self._routes.get((method, path))
            if route is None:
                raise UpstreamError(404, f"Invalid URL ({method} {path})")
            payload = route(scope["query_string"], await _read_body(receive))
            await _send_json(send, 200, _encode(payload))
        except UpstreamError as exc:
            await _send_json(send, exc.status, _encode(exc.body), exc.headers)

    def _recent_requests(self, query: bytes, _body: bytes) -> object:
        raw = dict(parse_qsl(query.decode("latin-1"))).get("limit")
        if raw is None:
            return self.state.recent_requests(self.state.settings.history_size)
        if not raw.isdigit():
            raise UpstreamError(400, "limit must be a non-negative integer", param="limit")
        return self.state.recent_requests(int(raw))

    def _update_control(self, _query: bytes, body: bytes) -> object:
        try:
            self.state.update_control(_decode_control(body or b"{}"))
        except msgspec.DecodeError as exc:
            raise UpstreamError(400, f"Invalid control body: {exc}") from exc
        return self.state.control

    def _reset(self, _query: bytes, _body: bytes) -> object:
        self.state.reset()
        return {"status": "ok"}

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        settings = state.settings
        body = await _read_body(receive)
        state.history.append((scope["path"], scope["query_string"], scope["headers"], body))
        headers: dict[bytes, bytes] = dict(scope["headers"])
        request = _parse_request(body)
        valid = request if isinstance(request, ChatRequest) else None
        key = _authenticate(settings.require_keys, headers, scope["query_string"], valid)
        if isinstance(request, UpstreamError):
            raise request
        forced = headers.get(b"x-mock-completion-tokens")
        messages_json = _encode(request.messages)
        prompt_tokens, natural = prompt_profile(
            messages_json, settings.seed, settings.min_completion, settings.max_completion
        )
        if forced is not None:
            if not forced.strip().isdigit():
                raise UpstreamError(400, "x-mock-completion-tokens must be an integer >= 0")
            natural = int(forced)
        cap = request.max_completion_tokens or request.max_tokens
        n = natural if cap is None else min(cap, natural)
        finish_reason = "length" if n < natural else "stop"

        watch = _ClientWatch(receive)
        try:
            if state.control.refuse:
                raise _forced_failure(503, state.control.retry_after)
            stream = bool(request.stream)
            delay = state.latency_ms() + (0.0 if stream else n * state.token_delay_ms())
            if await watch.sleep(delay / 1000):
                return
            if request.model in state.control.hang_models:
                if await watch.sleep(HANG_SECONDS):
                    return
                raise UpstreamError(504, "Mock upstream hang elapsed", type_="server_error")
            if request.model in state.control.garbage_models:
                await _send_bytes(send, 200, b"text/html", GARBAGE_PAGE)
                return
            status = state.control.fail_models.get(request.model)
            if status is not None:
                raise _forced_failure(status, state.control.retry_after)
            if state.should_fail_randomly():
                raise _forced_failure(settings.fail_status, state.control.retry_after)

            state.account(request.model, key, prompt_tokens, n)
            usage = Usage(prompt_tokens, n, prompt_tokens + n)
            if stream:
                include_usage = bool(
                    request.stream_options and request.stream_options.include_usage
                )
                await self._stream(
                    send,
                    watch,
                    model=request.model,
                    n=n,
                    finish_reason=finish_reason,
                    usage=usage,
                    include_usage=include_usage,
                )
            else:
                completion = Completion(
                    id=_completion_id(),
                    created=int(time.time()),
                    model=request.model,
                    choices=[
                        Choice(
                            message=AssistantMessage("assistant", _words(0, n)),
                            finish_reason=finish_reason,
                        )
                    ],
                    usage=usage,
                )
                await _send_json(send, 200, _encode(completion))
        finally:
            watch.close()

    async def _stream(
        self,
        send: Send,
        watch: _ClientWatch,
        *,
        model: str,
        n: int,
        finish_reason: str,
        usage: Usage,
        include_usage: bool,
    ) -> None:
        """Send one SSE event per ASGI message, pacing content at ``token_delay_ms``."""
        step, token_delay_ms = self.state.settings.tokens_per_chunk, self.state.token_delay_ms()
        completion_id, created = _completion_id(), int(time.time())
        usage_field: Usage | msgspec.UnsetType | None = None if include_usage else msgspec.UNSET

        def event(
            choices: list[ChunkChoice],
            chunk_usage: Usage | msgspec.UnsetType | None = usage_field,
        ) -> Message:
            chunk = Chunk(
                id=completion_id, created=created, model=model, choices=choices, usage=chunk_usage
            )
            data = b"data: " + _encode(chunk) + b"\n\n"
            return {"type": "http.response.body", "body": data, "more_body": True}

        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await send(event([ChunkChoice(delta=Delta(role="assistant", content=""))]))
        for start in range(0, n, step):
            end = min(n, start + step)
            if await watch.sleep((end - start) * token_delay_ms / 1000):
                return
            await send(event([ChunkChoice(delta=Delta(content=_words(start, end)))]))
        await send(event([ChunkChoice(delta=Delta(), finish_reason=finish_reason)]))
        if include_usage:
            await send(event([], usage))
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})


def create_mock_app(settings: MockSettings) -> ASGIApp:
    """The mock as a plain ASGI callable, for uvicorn or an in-process httpx transport."""
    return MockUpstream(settings)


# --- helpers --------------------------------------------------------------------------


class _ClientWatch:
    """Sleeps that end early when the client disconnects.

    ASGI reports a disconnect only through ``receive()``, so after the body has been read
    a task keeps waiting on it; without this a hung or slow request would keep running
    long after the proxy under test gave up on it.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True when the client went away meanwhile."""
        if seconds <= 0:
            return False
        if self._task is None:
            self._task = asyncio.create_task(self._wait_disconnect())
        done, _ = await asyncio.wait({self._task}, timeout=seconds)
        return bool(done)

    async def _wait_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _authenticate(
    required: tuple[str, ...],
    headers: dict[bytes, bytes],
    query: bytes,
    request: ChatRequest | None,
) -> str | None:
    """The key the request authenticated with (any accepted form), or 401.

    Clients and proxies put keys in different places (OpenAI bearer, Azure ``api-key``,
    query parameters, body), so all count; with no required keys the first one presented
    is still returned, for the per-key stats.
    """
    presented: list[str] = []
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        presented.append(token.strip())
    if b"api-key" in headers:
        presented.append(headers[b"api-key"].decode("latin-1").strip())
    if query:
        presented += [v for k, v in parse_qsl(query.decode("latin-1")) if k in ("api_key", "key")]
    if request is not None:
        presented += [v for v in (request.api_key, request.key) if v]
    if not required:
        return presented[0] if presented else None
    for key in presented:
        if key in required:
            return key
    shown = _mask(presented[0]) if presented else "<none>"
    raise UpstreamError(
        401,
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def _mask(key: str) -> str:
    """Like OpenAI's ``sk-abc***wxyz``; short keys are hidden entirely."""
    return f"{key[:3]}***{key[-4:]}" if len(key) >= 12 else "***"


def _parse_request(body: bytes) -> ChatRequest | UpstreamError:
    """The request, or the 400 to send; returned, not raised, because 401 takes precedence."""
    try:
        return _decode_request(body)
    except msgspec.ValidationError as exc:
        return UpstreamError(400, f"Invalid request body: {exc}")
    except msgspec.DecodeError:
        return UpstreamError(
            400,
            "We could not parse the JSON body of your request. The OpenAI API expects a "
            "JSON payload, but what was sent was not valid JSON.",
        )


def _forced_failure(status: int, retry_after: int | None) -> UpstreamError:
    headers: list[tuple[bytes, bytes]] = []
    if retry_after is not None and status in (429, 503):
        headers.append((b"retry-after", str(retry_after).encode()))
    if status == 429:
        return UpstreamError(
            429,
            "Rate limit reached for requests",
            type_="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if status == 503:
        message = "The engine is currently overloaded, please try again later."
        return UpstreamError(503, message, type_="server_error", headers=headers)
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return UpstreamError(status, f"Mock upstream forced failure (HTTP {status})", type_=type_)


def _words(start: int, end: int) -> str:
    """Tokens ``start..end`` of the reply: "tok tok ..." without a leading space."""
    text = WORD * (end - start)
    return text[1:] if start == 0 else text


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send_bytes(send, status, b"application/json", body, extra)


async def _send_bytes(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- serving and CLI ------------------------------------------------------------------


class _AnnouncingServer(uvicorn.Server):
    """Prints the listening line parent processes wait for, with the real bound port."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            address = format_address(self.config.host, port)
            print(f"mock-upstream listening on http://{address}", flush=True)


def run_mock_upstream(host: str, port: int, settings: MockSettings) -> None:
    """Serve the mock until interrupted (uvloop and httptools when installed);
    ``CannotListen`` when the address cannot be bound."""
    (sock,) = bind_all([(host, port)])
    config = uvicorn.Config(
        create_mock_app(settings),
        host=host,
        port=port,
        loop="auto",
        http="auto",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    try:
        _AnnouncingServer(config).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tokenlb mock-upstream", description="Fake OpenAI-compatible LLM server."
    )
    add_mock_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        settings = settings_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_mock_upstream(ns.host, ns.port, settings)
    except CannotListen as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")


if __name__ == "__main__":
    main()
