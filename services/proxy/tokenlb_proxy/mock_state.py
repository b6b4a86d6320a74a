"""Data model of the fake upstream (``mock_upstream``): settings, run-time state, wire types.

Kept apart from the ASGI code so the server module is only about behaviour, and so that
``tokenlb --help`` builds the mock's options without importing a server. All state
lives on one event loop and is only touched synchronously, so it needs no locks. The
response types list their fields in OpenAI's order, so replies read like the real thing.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import random
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec

from tokenlb_proxy.tokens import get_counter

__all__ = [
    "AssistantMessage",
    "ChatMessage",
    "ChatRequest",
    "Choice",
    "Chunk",
    "ChunkChoice",
    "Completion",
    "Control",
    "ControlUpdate",
    "Counts",
    "Delta",
    "ErrorBody",
    "ErrorDetail",
    "MockSettings",
    "MockState",
    "RecordedRequest",
    "Usage",
    "add_mock_arguments",
    "key_fingerprint",
    "prompt_profile",
    "settings_from_args",
]

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
ErrorStatus = Annotated[int, msgspec.Meta(ge=400, le=599)]


class MockSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Start-up behaviour of the mock; ``/mock/control`` overrides some of it at run time."""

    #: Added before every chat response (before the first chunk when streaming).
    latency_ms: float = 0.0
    #: Generation time per completion token: paced between stream chunks, and summed
    #: before a non-streamed reply, so both modes take equally long like a real model.
    token_delay_ms: float = 0.0
    #: Share of chat requests (0..1) failing with ``fail_status``, drawn from a seeded RNG
    #: so a run is reproducible.
    fail_rate: float = 0.0
    fail_status: int = 500
    #: When non-empty, chat requests must present one of these keys.
    require_keys: tuple[str, ...] = ()
    #: Seeds both the failure RNG and the completion-length hash.
    seed: int = 0
    #: Range of the natural completion length chosen from the prompt's hash.
    min_completion: int = 8
    max_completion: int = 200
    tokens_per_chunk: int = 4
    #: How many recent chat requests ``/mock/requests`` can return.
    history_size: int = 1000

    def __post_init__(self) -> None:
        """Reject nonsense early, at the CLI, rather than as odd behaviour mid-benchmark."""
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.latency_ms < 0 or self.token_delay_ms < 0:
            raise ValueError("latency_ms and token_delay_ms must not be negative")
        if not 0 <= self.min_completion <= self.max_completion:
            raise ValueError("need 0 <= min_completion <= max_completion")
        if self.tokens_per_chunk < 1 or self.history_size < 1:
            raise ValueError("tokens_per_chunk and history_size must be at least 1")


def add_mock_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``/``--port`` and every ``MockSettings`` option, for ``tokenlb mock-upstream``."""
    d = MockSettings()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default %(default)s)")
    add("--port", type=int, default=9000, help="port, 0 for any free one (default %(default)s)")
    add(
        "--latency-ms",
        type=float,
        default=d.latency_ms,
        help="milliseconds before each response (default %(default)s)",
    )
    add(
        "--token-delay-ms",
        type=float,
        default=d.token_delay_ms,
        help="milliseconds per output token (default %(default)s)",
    )
    add(
        "--fail-rate",
        type=float,
        default=d.fail_rate,
        help="share of requests failing, 0..1 (default %(default)s)",
    )
    add(
        "--fail-status",
        type=int,
        default=d.fail_status,
        help="HTTP status of those failures (default %(default)s)",
    )
    add(
        "--require-key",
        action="append",
        dest="require_keys",
        metavar="KEY",
        help="accept only this API key, wherever a client sends it (repeatable)",
    )
    add(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of failures and completion lengths (default %(default)s)",
    )
    add(
        "--min-completion",
        type=int,
        default=d.min_completion,
        help="shortest reply in tokens (default %(default)s)",
    )
    add(
        "--max-completion",
        type=int,
        default=d.max_completion,
        help="longest reply in tokens (default %(default)s)",
    )
    add(
        "--tokens-per-chunk",
        type=int,
        default=d.tokens_per_chunk,
        help="tokens per SSE chunk (default %(default)s)",
    )


def settings_from_args(ns: argparse.Namespace) -> MockSettings:
    """Settings from parsed ``add_mock_arguments`` options; ValueError when inconsistent."""
    return MockSettings(
        latency_ms=ns.latency_ms,
        token_delay_ms=ns.token_delay_ms,
        fail_rate=ns.fail_rate,
        fail_status=ns.fail_status,
        require_keys=tuple(ns.require_keys or ()),
        seed=ns.seed,
        min_completion=ns.min_completion,
        max_completion=ns.max_completion,
        tokens_per_chunk=ns.tokens_per_chunk,
    )


class Control(msgspec.Struct, kw_only=True):
    """Run-time overrides that tests set with ``POST /mock/control``."""

    #: model -> HTTP status every request for that model fails with.
    fail_models: dict[str, int] = msgspec.field(default_factory=dict)
    #: Replace ``MockSettings.latency_ms`` / ``token_delay_ms`` when set.
    latency_ms: float | None = None
    token_delay_ms: float | None = None
    #: Requests for these models get no answer until the client gives up.
    hang_models: list[str] = msgspec.field(default_factory=list)
    #: Requests for these models get a 200 that is not a completion (an HTML page).
    garbage_models: list[str] = msgspec.field(default_factory=list)
    #: Answer every chat request with 503, as an upstream being drained would.
    refuse: bool = False
    #: ``Retry-After`` seconds sent with forced 429 and 503 failures.
    retry_after: int | None = None


class ControlUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A partial ``Control``: only fields present in the request body change.

    Unknown fields are rejected so a misspelt override fails the test that sent it
    instead of silently doing nothing.
    """

    fail_models: dict[str, ErrorStatus] | msgspec.UnsetType = msgspec.UNSET
    latency_ms: NonNegative | msgspec.UnsetType | None = msgspec.UNSET
    token_delay_ms: NonNegative | msgspec.UnsetType | None = msgspec.UNSET
    hang_models: list[str] | msgspec.UnsetType = msgspec.UNSET
    garbage_models: list[str] | msgspec.UnsetType = msgspec.UNSET
    refuse: bool | msgspec.UnsetType = msgspec.UNSET
    retry_after: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType | None = msgspec.UNSET


class Counts(msgspec.Struct):
    """Usage handed out by the mock; what a balancer's own accounting must match."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.total_tokens += prompt_tokens + completion_tokens


class Stats(msgspec.Struct):
    total: Counts = msgspec.field(default_factory=Counts)
    by_model: dict[str, Counts] = msgspec.field(default_factory=dict)
    by_key: dict[str, int] = msgspec.field(default_factory=dict)


class RecordedRequest(msgspec.Struct):
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


#: Raw ASGI pieces of a received request; rendered only when ``/mock/requests`` asks,
#: which keeps recording off the hot path.
RawRequest = tuple[str, bytes, list[tuple[bytes, bytes]], bytes]


class MockState:
    """Everything the mock remembers between requests."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.control = Control()
        self.stats = Stats()
        self.rng = random.Random(settings.seed)
        self.history: collections.deque[RawRequest] = collections.deque(
            maxlen=settings.history_size
        )

    def reset(self) -> None:
        """Forget stats, history and overrides; reseed so failures repeat after a reset."""
        self.control = Control()
        self.stats = Stats()
        self.rng = random.Random(self.settings.seed)
        self.history.clear()

    def update_control(self, update: ControlUpdate) -> None:
        for field in update.__struct_fields__:
            value = getattr(update, field)
            if value is not msgspec.UNSET:
                setattr(self.control, field, value)

    def latency_ms(self) -> float:
        override = self.control.latency_ms
        return self.settings.latency_ms if override is None else override

    def token_delay_ms(self) -> float:
        override = self.control.token_delay_ms
        return self.settings.token_delay_ms if override is None else override

    def should_fail_randomly(self) -> bool:
        rate = self.settings.fail_rate
        return rate > 0 and self.rng.random() < rate

    def account(self, model: str, key: str | None, prompt: int, completion: int) -> None:
        """Count one successful (HTTP 200) completion."""
        self.stats.total.add(prompt, completion)
        counts = self.stats.by_model.get(model)
        if counts is None:
            counts = self.stats.by_model[model] = Counts()
        counts.add(prompt, completion)
        if key is not None:
            fingerprint = key_fingerprint(key)
            self.stats.by_key[fingerprint] = self.stats.by_key.get(fingerprint, 0) + 1

    def recent_requests(self, limit: int) -> list[RecordedRequest]:
        items = list(self.history)[-limit:] if limit > 0 else []
        return [_render(item) for item in items]


def _render(raw: RawRequest) -> RecordedRequest:
    path, query_string, header_list, body = raw
    headers: dict[str, str] = {}
    for name, value in header_list:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    try:
        decoded: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = body.decode("utf-8", "replace")
    query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    return RecordedRequest(path=path, query=query, headers=headers, body=decoded)


def key_fingerprint(key: str) -> str:
    """Short, stable id of a key for stats: enough to tell keys apart, useless to a thief."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class ChatMessage(msgspec.Struct):
    """The parts of a chat message that count towards prompt tokens."""

    role: str = ""
    content: Any = None
    name: str | None = None


_decode_messages = msgspec.json.Decoder(list[ChatMessage]).decode


@functools.lru_cache(maxsize=4096)
def prompt_profile(messages_json: bytes, seed: int, low: int, high: int) -> tuple[int, int]:
    """``(prompt_tokens, natural completion length)`` of canonically encoded messages.

    The length comes from a hash of the messages, so the same prompt always gets the same
    answer whether streamed or not and whichever proxy re-serialised it. Cubing a uniform
    draw makes the lengths heavy-tailed like real chat replies: the median is about an
    eighth of the range, a few replies approach ``high``. Benchmarks repeat prompts, and
    tokenising is the costliest step of a mock reply, hence the cache.
    """
    prompt_tokens = get_counter().count_messages(_decode_messages(messages_json))
    digest = hashlib.blake2b(messages_json, digest_size=8, key=str(seed).encode()).digest()
    uniform = int.from_bytes(digest, "big") / 2.0**64
    return prompt_tokens, low + int((high - low + 1) * uniform**3)


# --- OpenAI wire format ---------------------------------------------------------------


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    """The request fields the mock acts on; everything else is accepted and ignored."""

    model: str
    messages: list[ChatMessage]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    #: Keys some clients put in the body instead of a header.
    api_key: str | None = None
    key: str | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct):
    role: str
    content: str
    refusal: None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: None = None


class Delta(msgspec.Struct):
    role: str | msgspec.UnsetType = msgspec.UNSET
    content: str | msgspec.UnsetType = msgspec.UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class Chunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChunkChoice]
    #: UNSET leaves the field out; OpenAI sends ``usage: null`` only with include_usage.
    usage: Usage | msgspec.UnsetType | None = msgspec.UNSET


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail
