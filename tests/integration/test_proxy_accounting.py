"""What the proxy counts, and what it refuses before counting or forwarding anything.

Real mock and proxy processes (harness in ``test_proxy_e2e``), both stores. Each
``tokens_count_strategy`` gets its own route (its own balancer), so after a handful of
requests its ``/status`` usage is exactly the strategy's quantity of what the mock served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.test_proxy_e2e import (
    SECRETS,
    Mock,
    Proxy,
    assert_matches_mock,
    messages,
    openai_error,
    route,
    running_proxy,
    target,
    write_config,
)
from tests.support import ManagedProcess, tokenlb_command

#: (input_cost, output_cost) per 1M tokens.
PRICES = {"gpt-4": (30.0, 60.0), "gpt-4o-mini": (0.15, 0.6)}
STRATEGIES = ("prompt-tokens", "completion-tokens", "total-tokens", "cost")
BODY_LIMIT = 1024
STREAMING_DENIED = "response streaming is not enabled for this LLM"


def priced_targets(url: str) -> list[dict[str, Any]]:
    return [
        target(
            model,
            url,
            options={"input_cost": prices[0], "output_cost": prices[1]},
            log_statistics=True,
        )
        for model, prices in PRICES.items()
    ]


#: Every test starts on a reset mock upstream (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_mock")


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    url = mock.chat_url
    # A day-long half-life: usage does not visibly decay while the module runs.
    routes = [
        route(s, priced_targets(url), {"tokens_count_strategy": s, "usage_half_life": 86400})
        for s in STRATEGIES
    ]
    plain = [target("gpt-4", url), target("gpt-4o-mini", url)]
    logged = [target(m, url, log_statistics=True) for m in ("gpt-4", "gpt-4o-mini")]
    routes += [
        route("deny", plain, response_streaming="deny"),
        route("always", plain, response_streaming="always"),
        route("chat", logged, max_request_body_size=BODY_LIMIT),
    ]
    config = write_config(tmp_path_factory.mktemp("accounting") / "kong.yaml", mock, routes)
    with running_proxy(process_logs, config, store_url) as running:
        yield running


def counts(proxy: Proxy, balancer: str) -> dict[str, dict[str, float]]:
    """A balancer's counters without ``usage``, which decays as time passes."""
    counters = proxy.counters(balancer)
    return {m: {k: v for k, v in c.items() if k != "usage"} for m, c in counters.items()}


def counted(strategy: str, model: str, prompt: int, completion: int) -> float:
    """The quantity ``strategy`` balances on (Kong's cost formula for ``cost``)."""
    input_cost, output_cost = PRICES[model]
    return {
        "prompt-tokens": prompt,
        "completion-tokens": completion,
        "total-tokens": prompt + completion,
        "cost": (prompt * input_cost + completion * output_cost) / 1e6,
    }[strategy]


# --- streaming --------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming(proxy: Proxy, mock: Mock, include_usage: bool) -> None:
    before = proxy.counters("chat")
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with (
        proxy.client() as client,
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages("Stream, please."), stream=True, **extra
        ) as stream,
    ):
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    requests, prompt_tokens, completion_tokens = mock.counts("gpt-4o-mini")
    assert requests == 1
    assert text == " ".join(["tok"] * completion_tokens)
    assert len(chunks) > 3
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    [recorded] = mock.requests()
    assert recorded["body"]["stream_options"] == {"include_usage": True}  # asked for us
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert chunks[-1].choices == []
        assert with_usage == [chunks[-1]]
        usage = chunks[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)
    else:
        assert with_usage == []
        assert all(c.choices for c in chunks)
    assert_matches_mock(proxy.settled("chat", before, 1), mock)


def test_streaming_is_incremental(proxy: Proxy, mock: Mock) -> None:
    mock.control(token_delay_ms=12)
    arrivals = []
    with proxy.client() as client:
        started = time.perf_counter()
        with client.chat.completions.create(
            model="gpt-4o-mini", messages=messages("Take your time."), stream=True
        ) as stream:
            for _ in stream:
                arrivals.append(time.perf_counter() - started)
    # At least 24 tokens (about 100 for this prompt) at 12 ms each.
    assert arrivals[-1] >= 24 * 0.012
    assert arrivals[0] < arrivals[-1] / 3, arrivals
    middle = [t for t in arrivals if arrivals[-1] * 0.25 < t < arrivals[-1] * 0.75]
    assert len(middle) >= 2, arrivals


# --- log_statistics -----------------------------------------------------------


def analytics_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"ai":')]


def aggregated_lines(proxy: Proxy, tmp_path: Path, logs: Path) -> list[dict[str, Any]]:
    """Run `tokenlb aggregator` until it caught up; the Kong log lines it wrote."""
    status = json.loads(proxy.status_text())
    sink = tmp_path / "kong-log.jsonl"
    aggregator = ManagedProcess(
        "aggregator-log",
        tokenlb_command(
            "aggregator", "--redis-url", status["redis"]["url"], "--log-sink", str(sink)
        ),
        logs,
    )

    def caught_up() -> bool:
        health = json.loads(proxy.status_text())["aggregators"]
        return bool(health["alive"]) and health["lag"] == 0 and health["pending"] == 0

    try:
        aggregator.wait_until(caught_up)
    finally:
        aggregator.stop()
    output = aggregator.output()
    for secret in SECRETS:
        assert secret not in output
    return analytics_lines(sink.read_text())


def test_log_statistics_and_no_key_in_logs(
    proxy: Proxy, mock: Mock, tmp_path: Path, process_logs: Path
) -> None:
    before_lines = len(analytics_lines(proxy.process.output()))
    before = proxy.counters("chat")
    with proxy.client() as client:
        client.chat.completions.create(model="gpt-4", messages=messages("one"))
        client.chat.completions.create(model="gpt-4o-mini", messages=messages("two"))
        with client.chat.completions.create(
            model="gpt-4o-mini", messages=messages("three"), stream=True
        ) as stream:
            list(stream)
    proxy.settled("chat", before, 3)
    output = proxy.process.output()
    records = analytics_lines(output)[before_lines:]
    if json.loads(proxy.status_text())["store"] == "redis":
        # With Redis the proxy only emits usage events; an aggregator writes the lines.
        assert records == []
        records = aggregated_lines(proxy, tmp_path, process_logs)[-3:]
    assert len(records) == 3  # one per request on a log_statistics target
    stats = mock.stats()
    usages = [r["ai"]["proxy"]["usage"] for r in records]
    served = [stats["by_model"][m] for m in ("gpt-4", "gpt-4o-mini")]
    for field in ("prompt_tokens", "completion_tokens"):
        assert sum(u[field] for u in usages) == sum(s[field] for s in served)
    for record, model in zip(records, ["gpt-4", "gpt-4o-mini", "gpt-4o-mini"], strict=True):
        meta, usage = record["ai"]["proxy"]["meta"], record["ai"]["proxy"]["usage"]
        assert (meta["plugin_id"], meta["provider_name"]) == ("chat", "openai")
        assert meta["response_model"] == model
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert records[2]["ai"]["proxy"]["usage"]["time_to_first_token"] >= 0  # the stream
    for secret in SECRETS:
        assert secret not in output


# --- counting per strategy ------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tokens_count_strategy(proxy: Proxy, mock: Mock, strategy: str) -> None:
    before = proxy.counters(strategy)
    with proxy.client(strategy) as client:
        for i in range(6):
            client.chat.completions.create(model="any", messages=messages(f"Question {i}?"))
        for include_usage in (False, True):
            with client.chat.completions.create(
                model="any",
                messages=messages(f"Stream {include_usage}"),
                stream=True,
                stream_options={"include_usage": include_usage},
            ) as stream:
                list(stream)
    delta = proxy.settled(strategy, before, 8)
    assert_matches_mock(delta, mock)
    assert all(d["errors"] == 0 for d in delta.values())
    for model, totals in delta.items():
        _, prompt, completion = mock.counts(model)
        assert prompt > 0
        assert totals["cost"] == pytest.approx(counted("cost", model, prompt, completion))
        # Reservations were all replaced by what the upstream reported.
        expected = counted(strategy, model, prompt, completion)
        assert totals["usage"] == pytest.approx(expected, rel=1e-3)


# --- response_streaming and bad input -------------------------------------------


def test_streaming_denied(proxy: Proxy, mock: Mock) -> None:
    before = counts(proxy, "deny")
    with proxy.client("deny") as client:
        with pytest.raises(openai.BadRequestError) as denied:
            client.chat.completions.create(model="gpt-4", messages=messages(), stream=True)
        assert mock.requests() == []
        assert mock.stats()["total"]["requests"] == 0
        assert counts(proxy, "deny") == before
        client.chat.completions.create(model="gpt-4", messages=messages())  # not streaming: fine
    error = openai_error(denied.value.response, 400, "invalid_request_error")
    assert error["message"] == STREAMING_DENIED
    assert mock.counts("gpt-4")[0] == 1


def test_streaming_always(proxy: Proxy, mock: Mock) -> None:
    before = proxy.counters("always")
    response = httpx.post(
        proxy.chat_url("always"), json={"model": "gpt-4", "messages": messages()}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["choices"] for c in chunks)  # the usage chunk stays hidden: nobody asked
    [recorded] = mock.requests()
    assert recorded["body"]["stream"] is True
    assert_matches_mock(proxy.settled("always", before, 1), mock)


def _post(
    proxy: Proxy, content: bytes | Iterator[bytes], path: str = "/v1/chat/completions"
) -> httpx.Response:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-whatever"}
    return httpx.post(f"{proxy.url}{path}", content=content, headers=headers, timeout=10)


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()


def _chunked(body: bytes) -> Iterator[bytes]:
    """``body`` sent in pieces, without a content-length (chunked transfer encoding)."""
    return iter([body[i : i + 256] for i in range(0, len(body), 256)])


BAD_INPUTS = {
    "invalid-json": (lambda p: _post(p, b'{"model": "gpt-4", "messages": ['), 400, None),
    "missing-messages": (lambda p: _post(p, _json({"model": "gpt-4"})), 400, "messages"),
    "empty-messages": (lambda p: _post(p, _json({"messages": []})), 400, "messages"),
    "messages-not-a-list": (lambda p: _post(p, _json({"messages": "hello"})), 400, "messages"),
    "bad-temperature": (
        lambda p: _post(p, _json({"messages": messages(), "temperature": "hot"})),
        400,
        "temperature",
    ),
    "bad-role": (
        lambda p: _post(p, _json({"messages": [{"role": "wizard", "content": "hi"}]})),
        400,
        "messages[0].role",
    ),
    "too-large": (
        lambda p: _post(p, _json({"messages": messages("x" * 2 * BODY_LIMIT)})),
        413,
        None,
    ),
    "too-large-chunked": (
        lambda p: _post(p, _chunked(_json({"messages": messages("x" * 2 * BODY_LIMIT)}))),
        413,
        None,
    ),
    "no-route": (lambda p: _post(p, _json({"messages": messages()}), "/v1/completions"), 404, None),
    "get-chat-path": (
        lambda p: httpx.get(f"{p.url}/v1/chat/completions", timeout=10),
        404,
        None,
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_happens(proxy: Proxy, mock: Mock, case: str) -> None:
    send, status, param = BAD_INPUTS[case]
    before = {b: counts(proxy, b) for b in (*STRATEGIES, "deny", "always", "chat")}
    error = openai_error(
        send(proxy), status, "not_found_error" if status == 404 else "invalid_request_error"
    )
    assert error["message"]
    assert error["param"] == param
    if status == 413:
        assert error["code"] == "request_too_large"
    assert mock.requests() == []
    assert mock.stats()["total"]["requests"] == 0
    assert {b: counts(proxy, b) for b in before} == before
    # The same route serves a valid request: the refusal was about the input.
    ok = _post(proxy, _json({"model": "gpt-4", "messages": messages()}))
    assert ok.status_code == 200
