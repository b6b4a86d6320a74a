"""Bad input, generated: whatever a client sends, the gateway answers it cleanly.

Hypothesis generates chat bodies (valid ones, wrong types, huge numbers, unicode, nested
junk, missing fields, broken and truncated JSON, raw bytes) and headers (traceparent
junk, odd content types, lying Content-Length) and sends them to one running replica
(a real process on the embedded store, in front of the mock upstream). For every one:

- no 5xx (the mock is never told to fail, so any 5xx is the gateway's own);
- every error is OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``;
- nothing new in the replica's log looks like a crash ("Traceback", "unhandled").

Framing the HTTP server itself rejects (a negative, non-numeric or duplicated
Content-Length) never reaches the gateway: uvicorn answers those with a plain-text 400
and closes the connection; that is accepted as is.

``TOKENLB_FUZZ_EXAMPLES`` raises the example count (default 300, derandomized so CI is
repeatable); ``TOKENLB_FUZZ_RANDOM=1`` draws fresh examples each run.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tests.support import ManagedProcess, start_mock, start_proxy

EXAMPLES = int(os.environ.get("TOKENLB_FUZZ_EXAMPLES", "300"))
RANDOM = os.environ.get("TOKENLB_FUZZ_RANDOM") == "1"
BODY_LIMIT = 16_384
CRASH_MARKS = ("Traceback", "unhandled", "Unhandled")
VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Gateway:
    proxy: ManagedProcess
    port: int
    http: httpx.Client
    #: How much of the replica's log earlier examples already checked.
    log_offset: int = 0

    def new_log(self) -> str:
        text = self.proxy.output()
        fresh, self.log_offset = text[self.log_offset :], len(text)
        return fresh


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("fuzz")
    mock, mock_port = start_mock(logs, "--max-completion", "16")
    url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    targets = [
        {
            "route_type": "llm/v1/chat",
            "model": {"provider": "openai", "name": name, "options": {"upstream_url": url}},
            "auth": {"header_name": "Authorization", "header_value": "Bearer sk-fuzz"},
        }
        for name in ("gpt-4o-mini", "gpt-4o")
    ]
    plugin = {
        "name": "ai-proxy-advanced",
        "config": {
            "balancer": {"retries": 1, "failover_criteria": ["error", "timeout", "http_500"]},
            "max_request_body_size": BODY_LIMIT,
            "model_name_header": True,
            "targets": targets,
        },
    }
    config = logs / "kong.yaml"
    config.write_text(yaml.safe_dump({"_format_version": "3.0", "plugins": [plugin]}))
    proxy, port, _ = start_proxy(logs, config)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield Gateway(proxy, port, http)
    finally:
        http.close()
        proxy.stop()
        mock.stop()


# --- what clients send ---------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=-2, max_value=300),
    st.floats(),  # nan and infinities: json.dumps writes NaN / Infinity, not JSON
    junk,
)
any_text = st.one_of(
    st.text(max_size=300),
    # Lone surrogates too: json.dumps writes them as \\udXXX escapes.
    st.text(st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))),
)
roles = st.one_of(
    st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]), junk
)
content_parts = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(any_text, junk)}),
        junk,
    ),
    max_size=3,
)
contents = st.one_of(any_text, st.none(), content_parts, junk)
messages = st.one_of(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"role": roles, "content": contents},
                optional={"name": st.one_of(st.text(max_size=12), junk), "tool_calls": junk},
            ),
            junk,
        ),
        min_size=1,
        max_size=4,
    ),
    junk,
)
#: Bodies an SDK would send: they reach the balancer and the upstream.
valid_chats = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "user", "assistant"]), "content": any_text}
            ),
            min_size=1,
            max_size=4,
        )
    },
    optional={
        "model": st.sampled_from(["gpt-4o-mini", "gpt-4o", "unknown"]),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "max_tokens": st.integers(min_value=1, max_value=4096),
        "temperature": st.floats(min_value=0, max_value=2),
        "top_p": st.floats(min_value=0, max_value=1),
        "n": st.integers(min_value=1, max_value=3),
    },
)
FIELDS = ("messages", "model", "stream", "stream_options", "max_tokens", "max_completion_tokens")
FIELDS += ("temperature", "top_p", "n", "tools", "user")


def _mutate(body: dict[str, Any], field: str, value: Any, drop: bool) -> dict[str, Any]:
    changed = dict(body)
    if drop:
        changed.pop(field, None)
    else:
        changed[field] = value
    return changed


#: A valid body with one field wrong (or missing): errors must name what is wrong.
mutated_chats = st.builds(
    _mutate,
    valid_chats,
    st.sampled_from(FIELDS),
    st.one_of(numbers, junk, messages, contents),
    st.booleans(),
)
#: Anything shaped like a chat body, every field possibly junk.
wild_chats = st.fixed_dictionaries(
    {},
    optional={
        "messages": messages,
        "model": st.one_of(st.sampled_from(["gpt-4o-mini", "gpt-4o", "unknown", ""]), junk),
        "stream": st.one_of(st.booleans(), junk),
        "stream_options": st.one_of(
            st.fixed_dictionaries({}, optional={"include_usage": st.one_of(st.booleans(), junk)}),
            junk,
        ),
        "max_tokens": numbers,
        "max_completion_tokens": numbers,
        "temperature": numbers,
        "top_p": numbers,
        "n": numbers,
        "tools": junk,
        "user": junk,
    },
)
chat_bodies = st.one_of(valid_chats, mutated_chats, mutated_chats, wild_chats)
#: Inputs written by hand because a generator would rarely produce them.
SPECIAL_BODIES = [
    b"",
    b"null",
    b"0",
    b'"a string"',
    b"[]",
    b"{}",
    b'{"messages": []}',
    b'{"messages": [{"role": "user", "content": "\\ud800 lone surrogate"}]}',
    b'{"messages": [{"role": "user", "content": "\\u0000 nul"}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e999}',
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "x"}], "n": 99999999999999999999999999}',
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -99999999999999999999}',
    b'{"messages": [{"role": "user", "content": "x"}], "messages": 5}',
    b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "BOM"}]}',
    b'{"messages": [{"role": "user", "content": "x"}]} trailing',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]}',
    b'{"messages": [{"role": "user", "content": "x"}], "stream": true, "stream_options": null}',
    b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": "\xff\xfe not utf-8"}]}',
    b"[" * 100_000,
    b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "' + b"a" * (BODY_LIMIT + 10) + b'"}]}',
]


def _json(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(_json, values, st.booleans())


# one_of picks a branch uniformly: repeats weight the bodies that get furthest.
bodies = st.one_of(
    _encoded(valid_chats),
    _encoded(valid_chats),
    _encoded(valid_chats),
    _encoded(mutated_chats),
    _encoded(mutated_chats),
    _encoded(wild_chats),
    _encoded(junk),
    _encoded(chat_bodies).flatmap(lambda b: st.integers(0, len(b)).map(lambda cut: b[:cut])),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(SPECIAL_BODIES),
)
header_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)
traceparents = st.one_of(
    st.none(),
    st.just(VALID_TRACEPARENT),
    st.just(VALID_TRACEPARENT.upper()),
    st.just("00-" + "0" * 32 + "-" + "0" * 16 + "-01"),
    st.just(VALID_TRACEPARENT + "-extra"),
    st.just("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz"),
    header_text,
    st.binary(min_size=1, max_size=60).map(
        lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip() or b"x"
    ),
)
content_types = st.one_of(
    st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-16",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "*/*",
            "",
        ]
    ),
    header_text,
)
#: How the Content-Length header lies (None: httpx sets the true one).
length_lies = st.one_of(
    st.none(),
    st.none(),
    st.sampled_from(["shorter", "longer", "zero", "negative", "junk", "huge", "twice"]),
)
CHAT_PATH = "/v1/chat/completions"


def _mostly(usual: str, others: list[str]) -> st.SearchStrategy[str]:
    """``usual`` 85% of the time (sampled_from does not weight repeated entries)."""
    return st.integers(0, 99).map(lambda i: usual if i < 85 else others[i % len(others)])


paths = _mostly(
    CHAT_PATH, [f"{CHAT_PATH}?api-version=2024&x=%ff", "/", "/v1/models", f"{CHAT_PATH}/x"]
)
methods = _mostly("POST", ["GET", "PUT", "DELETE", "PATCH"])


# --- sending and checking ------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    #: Produced by uvicorn's HTTP parser, not the gateway (malformed framing).
    framing: bool = False


def _send(gateway: Gateway, method: str, path: str, headers: dict[str, Any], body: bytes) -> Answer:
    response = gateway.http.request(method, path, headers=headers, content=body)
    return Answer(response.status_code, dict(response.headers), response.content)


def _send_lying(
    gateway: Gateway, method: str, path: str, headers: dict[str, Any], body: bytes, lie: str
) -> Answer:
    """A raw HTTP/1.1 request whose Content-Length does not match its body."""
    declared = {
        "shorter": [str(max(0, len(body) - 1))],
        "longer": [str(len(body) + 100)],
        "zero": ["0"],
        "negative": ["-1"],
        "junk": ["12abc"],
        "huge": ["9" * 30],
        "twice": [str(len(body)), str(len(body) + 1)],
    }[lie]
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in headers.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    lines += [b"Content-Length: " + value.encode() for value in declared]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        # "longer": the server is still waiting for the rest; the client gives up.
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if not received:
        return Answer(0, {}, b"")  # closed without answering: a client that lied gets nothing
    head, _, payload = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    if answer_headers.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    framing = answer_headers.get("content-type", "").startswith("text/plain")
    return Answer(int(status_line.split()[1]), answer_headers, payload, framing)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + rest[:size], rest[size + 2 :]
    return out


def _say(text: str) -> None:
    """Shown with a failing example (Hypothesis) or in the captured output (pytest)."""
    if currently_in_test_context():
        note(text)
    else:
        print(text)


def _assert_openai_error(answer: Answer) -> None:
    try:
        document = json.loads(answer.body)
    except ValueError:
        pytest.fail(f"{answer.status} error is not JSON: {answer.body[:300]!r}")
    assert isinstance(document, dict), document
    assert set(document) == {"error"}, document
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}, document
    assert isinstance(error["message"], str), document
    assert error["message"], document
    assert isinstance(error["type"], str), document
    assert error["param"] is None or isinstance(error["param"], str), document
    assert error["code"] is None or isinstance(error["code"], str), document


@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    method=methods,
    path=paths,
    body=bodies,
    content_type=content_types,
    traceparent=traceparents,
    lie=length_lies,
    authorization=st.one_of(st.none(), header_text.map(lambda t: f"Bearer {t}".strip())),
)
def test_bad_input_never_breaks_the_gateway(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes,
    content_type: str | None,
    traceparent: str | bytes | None,
    lie: str | None,
    authorization: str | None,
) -> None:
    headers: dict[str, Any] = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if traceparent is not None:
        headers["traceparent"] = traceparent
    if authorization is not None:
        headers["authorization"] = authorization
    status = _check(gateway, method, path, headers, body, lie)
    event(f"status {status}")  # --hypothesis-show-statistics shows the spread


@pytest.mark.parametrize("body", SPECIAL_BODIES, ids=lambda b: repr(b[:40]))
@pytest.mark.parametrize("lie", [None, "shorter", "longer"])
def test_hand_written_bad_bodies(gateway: Gateway, body: bytes, lie: str | None) -> None:
    """The inputs a generator rarely draws, every one of them, every time."""
    _check(gateway, "POST", "/v1/chat/completions", {}, body, lie)


def _check(
    gateway: Gateway,
    method: str,
    path: str,
    headers: dict[str, Any],
    body: bytes,
    lie: str | None,
) -> int:
    """Send one request; fail on a 5xx, a non-OpenAI error, or a crash in the log."""
    _say(f"{method} {path} headers={headers!r} lie={lie} body={body[:500]!r}")
    if lie is None:
        answer = _send(gateway, method, path, headers, body)
    else:
        answer = _send_lying(gateway, method, path, headers, body, lie)
    _say(f"-> {answer.status} {answer.body[:500]!r}")
    crash = [line for line in gateway.new_log().splitlines() if any(m in line for m in CRASH_MARKS)]
    assert not crash, gateway.proxy.output()[-4000:]
    assert answer.status < 500, answer
    if answer.status >= 400 and not answer.framing:
        _assert_openai_error(answer)
    if answer.status == 200 and answer.headers.get("content-type", "").startswith("application"):
        assert "choices" in json.loads(answer.body)
    return answer.status


def test_the_fuzzed_replica_logged_no_crash(gateway: Gateway) -> None:
    """Run after the fuzz (same module): the whole log, once more, end to end."""
    log = gateway.proxy.output()
    assert not [m for m in CRASH_MARKS if m in log], log[-4000:]
    assert gateway.proxy.alive()
