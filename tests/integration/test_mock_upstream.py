"""The mock upstream, run as a real process and driven with the official OpenAI SDK.

Every other integration test and benchmark trusts this server's usage numbers and its
OpenAI wire format, so both are checked against the SDK and the shared token counter.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import openai
import pytest

from tokenlb_proxy.mock_upstream import (
    MockSettings,
    add_mock_arguments,
    create_mock_app,
    settings_from_args,
)
from tokenlb_proxy.tokens import get_counter

REPO = Path(__file__).resolve().parents[2]
GOOD_KEY = "sk-mock-good-key-0123456789"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three prime numbers, please."},
]
STREAM_BODY: dict[str, Any] = {"model": "m", "messages": MESSAGES, "stream": True}
EXPECTED_PROMPT_TOKENS = get_counter().count_messages(SimpleNamespace(**m) for m in MESSAGES)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(*args: str) -> Iterator[str]:
    """Run the mock as a child process; yield its base URL once it says it listens."""
    port = _free_port()
    pythonpath = [str(REPO / "services" / "proxy"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)}
    code = "from tokenlb_proxy.mock_upstream import main; main()"
    cmd = [sys.executable, "-c", code, "--port", str(port), *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                assert selector.select(timeout=15), "mock-upstream did not start in time"
            line = proc.stdout.readline().strip()
            assert line == f"mock-upstream listening on http://127.0.0.1:{port}"
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def default_server() -> Iterator[str]:
    yield from _serve("--seed", "7")


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    yield from _serve("--require-key", GOOD_KEY, "--require-key", "sk-other-key-000000000")


@pytest.fixture
def http(default_server: str) -> Iterator[httpx.Client]:
    """A client for the default server, which starts every test from a clean state."""
    with httpx.Client(base_url=default_server) as client:
        client.post("/mock/reset").raise_for_status()
        yield client


@pytest.fixture
def client(http: httpx.Client) -> Iterator[openai.OpenAI]:
    base = f"{http.base_url}".rstrip("/")
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def keyed_http(keyed_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_server) as client:
        client.post("/mock/reset").raise_for_status()
        yield client


def _sse_events(text: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return [msgspec.json.decode(event) for event in events[:-1]]


def test_completion_usage_is_counted_and_deterministic(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == "gpt-4o"
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens == EXPECTED_PROMPT_TOKENS
    assert 8 <= usage.completion_tokens <= 200
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert get_counter().count_text(choice.message.content or "") == usage.completion_tokens
    again = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert again.usage == usage


def test_stream_without_include_usage_sends_no_usage(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    reference = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert content == reference.choices[0].message.content
    raw = http.post("/v1/chat/completions", json=STREAM_BODY)
    assert raw.headers["content-type"] == "text/event-stream"
    assert all("usage" not in event for event in _sse_events(raw.text))


def test_stream_with_include_usage_ends_with_usage_chunk(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    reference = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage == reference.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    body = {**STREAM_BODY, "stream_options": {"include_usage": True}}
    events = _sse_events(http.post("/v1/chat/completions", json=body).text)
    assert all(event["usage"] is None for event in events[:-1])


def test_stream_chunks_are_sent_as_generated(http: httpx.Client) -> None:
    http.post("/mock/control", json={"token_delay_ms": 25}).raise_for_status()
    body = STREAM_BODY
    headers = {"x-mock-completion-tokens": "8"}  # two chunks of four tokens, 100 ms each
    arrivals: list[float] = []
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())

    assert len(arrivals) == 5  # role, 2 x content, finish, [DONE]
    assert arrivals[-1] - arrivals[0] >= 0.15


def test_max_tokens_caps_completion_with_length(client: openai.OpenAI) -> None:
    forced = {"x-mock-completion-tokens": "50"}
    capped = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=5, extra_headers=forced
    )
    newer = client.chat.completions.create(
        model="m", messages=MESSAGES, max_completion_tokens=7, extra_headers=forced
    )
    short = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=5, extra_headers={"x-mock-completion-tokens": "3"}
    )

    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 5
    assert newer.usage is not None
    assert (newer.choices[0].finish_reason, newer.usage.completion_tokens) == ("length", 7)
    assert short.usage is not None
    assert (short.choices[0].finish_reason, short.usage.completion_tokens) == ("stop", 3)


def test_required_key_accepted_in_any_place_and_rejected_otherwise(
    keyed_http: httpx.Client,
) -> None:
    base = f"{keyed_http.base_url}".rstrip("/") + "/v1"
    with openai.OpenAI(base_url=base, api_key=GOOD_KEY, max_retries=0) as good:
        assert good.chat.completions.create(model="m", messages=MESSAGES).choices
    bad_key = "sk-wrong-key-abcdefghijkl"
    with (
        openai.OpenAI(base_url=base, api_key=bad_key, max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as rejected,
    ):
        bad.chat.completions.create(model="m", messages=MESSAGES)

    error = rejected.value.response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Incorrect API key provided")
    assert bad_key not in rejected.value.response.text
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES}
    url = "/v1/chat/completions"
    assert keyed_http.post(url, json=body, headers={"api-key": GOOD_KEY}).status_code == 200
    assert keyed_http.post(url, json=body, params={"api_key": GOOD_KEY}).status_code == 200
    assert keyed_http.post(url, json=body, params={"key": GOOD_KEY}).status_code == 200
    assert keyed_http.post(url, json={**body, "api_key": GOOD_KEY}).status_code == 200
    assert keyed_http.post(url, json=body).status_code == 401
    stats = keyed_http.get("/mock/stats").json()
    assert stats["total"]["requests"] == 5
    assert stats["by_key"] == {hashlib.sha256(GOOD_KEY.encode()).hexdigest()[:8]: 5}


def test_forced_failures_via_control(client: openai.OpenAI, http: httpx.Client) -> None:
    control = {"fail_models": {"gpt-4": 429}, "retry_after": 2}
    http.post("/mock/control", json=control).raise_for_status()
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.response.json()["error"]["code"] == "rate_limit_exceeded"
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices

    http.post("/mock/control", json={"fail_models": {"gpt-4": 500}}).raise_for_status()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    http.post("/mock/control", json={"fail_models": {}, "refuse": True}).raise_for_status()
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.status_code == 503

    assert http.get("/mock/stats").json()["by_model"].keys() == {"gpt-4o"}
    http.post("/mock/reset").raise_for_status()
    assert client.chat.completions.create(model="gpt-4", messages=MESSAGES).choices


def test_hang_lasts_until_the_client_gives_up(client: openai.OpenAI, http: httpx.Client) -> None:
    http.post("/mock/control", json={"hang_models": ["stuck"]}).raise_for_status()
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="stuck", messages=MESSAGES)
    assert time.monotonic() - started < 2
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_stats_by_model_count_only_successes(client: openai.OpenAI, http: httpx.Client) -> None:
    usages = [
        client.chat.completions.create(model=model, messages=MESSAGES).usage
        for model in ("gpt-4o", "gpt-4o", "gpt-4o-mini")
    ]
    http.post("/v1/chat/completions", content=b"{not json")

    stats = http.get("/mock/stats").json()
    completion = [usage.completion_tokens for usage in usages if usage is not None]
    assert stats["total"] == {
        "requests": 3,
        "prompt_tokens": 3 * EXPECTED_PROMPT_TOKENS,
        "completion_tokens": sum(completion),
        "total_tokens": 3 * EXPECTED_PROMPT_TOKENS + sum(completion),
    }
    assert stats["by_model"]["gpt-4o"]["requests"] == 2
    assert stats["by_model"]["gpt-4o-mini"]["completion_tokens"] == completion[2]
    assert stats["by_key"] == {hashlib.sha256(b"sk-test").hexdigest()[:8]: 3}


def test_request_log_records_what_was_received(client: openai.OpenAI, http: httpx.Client) -> None:
    client.chat.completions.create(model="a", messages=MESSAGES)
    client.chat.completions.create(model="b", messages=MESSAGES, extra_headers={"x-trace": "t1"})

    (last,) = http.get("/mock/requests", params={"limit": 1}).json()
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["authorization"] == "Bearer sk-test"
    assert last["headers"]["x-trace"] == "t1"
    assert last["body"] == {"model": "b", "messages": MESSAGES}
    assert [r["body"]["model"] for r in http.get("/mock/requests").json()] == ["a", "b"]
    assert http.get("/mock/requests", params={"limit": "x"}).status_code == 400


def test_errors_are_openai_shaped(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    cases = [
        http.get("/v1/models"),
        http.post("/v1/chat/completions", content=b"{not json"),
        http.post("/v1/chat/completions", json={"model": "m"}),
        http.post("/mock/control", json={"fail_modles": {}}),
    ]

    assert [response.status_code for response in cases] == [404, 400, 400, 400]
    for response in cases:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


async def test_fail_rate_is_reproducible_in_process() -> None:
    """Same seed, same failures: a benchmark with --fail-rate can be rerun exactly."""
    settings = MockSettings(fail_rate=0.5, fail_status=502, seed=3)
    body = {"model": "m", "messages": MESSAGES}
    runs = []
    for _ in range(2):
        transport = httpx.ASGITransport(app=create_mock_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://mock") as mock:
            runs.append(
                [(await mock.post("/chat/completions", json=body)).status_code for _ in range(40)]
            )

    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 502}


def test_cli_arguments_build_settings() -> None:
    parser = argparse.ArgumentParser()
    add_mock_arguments(parser)
    ns = parser.parse_args(["--require-key", "a", "--require-key", "b", "--fail-rate", "0.25"])

    settings = settings_from_args(ns)
    assert (ns.host, ns.port) == ("127.0.0.1", 9000)
    assert settings.require_keys == ("a", "b")
    assert settings.fail_rate == 0.25
    with pytest.raises(ValueError, match="fail_rate"):
        settings_from_args(parser.parse_args(["--fail-rate", "2"]))


def test_the_tokenizer_is_loaded_before_the_first_request() -> None:
    """A first answer ~0.1 s slower than the rest would skew lowest-latency balancers."""
    get_counter.cache_clear()
    create_mock_app(MockSettings())
    assert get_counter.cache_info().currsize == 1
