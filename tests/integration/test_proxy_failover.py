"""Failover: connection refused, upstream 500s and read timeouts, with real processes.

Each scenario has its own route and balancer, so its failed target starts at zero usage:
a failed attempt releases its reservation, the target stays at zero, and lowest-usage
(ties to the earlier target) tries it first on every request. Harness in
``test_proxy_e2e``; both stores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.test_proxy_e2e import (
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
from tests.support import free_port

READ_TIMEOUT_MS = 300
REQUESTS = 4


#: Every test starts on a reset mock upstream (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_mock")


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    url = mock.chat_url
    closed = f"http://127.0.0.1:{free_port()}/v1/chat/completions"  # nothing listens there
    refused = [target("dead-model", closed), target("gpt-4o-mini", url)]
    pair = [target("gpt-4", url), target("gpt-4o-mini", url)]
    routes = [
        route("refused", refused),
        route("refused-once", refused, {"retries": 0}),
        route("http500", pair, {"failover_criteria": ["error", "timeout", "http_500"]}),
        route("pass500", pair),
        route("timeout", pair, {"read_timeout": READ_TIMEOUT_MS}),
        route("invalid", pair, {"failover_criteria": ["error", "timeout", "invalid_header"]}),
        route("pass-invalid", pair),
    ]
    config = write_config(tmp_path_factory.mktemp("failover") / "kong.yaml", mock, routes)
    with running_proxy(process_logs, config, store_url) as running:
        yield running


def ask(proxy: Proxy, route_name: str, count: int, model: str = "any") -> list[str]:
    """Send ``count`` requests; the models that served them."""
    with proxy.client(route_name) as client:
        return [
            client.chat.completions.create(model=model, messages=messages(f"q{i}")).model
            for i in range(count)
        ]


def test_connection_refused_fails_over(proxy: Proxy, mock: Mock) -> None:
    before = proxy.counters("refused")
    assert ask(proxy, "refused", REQUESTS) == ["gpt-4o-mini"] * REQUESTS
    delta = proxy.settled("refused", before, REQUESTS)
    dead, live = delta["dead-model"], delta["gpt-4o-mini"]
    # Every request tried the dead target first, and each failure was counted as one.
    assert dead["errors"] == dead["requests"] == REQUESTS
    assert (dead["prompt_tokens"], dead["completion_tokens"]) == (0, 0)
    assert dead["usage"] == pytest.approx(0, abs=1e-6)  # reservations released
    assert live["errors"] == 0
    assert live["usage"] > 0
    assert_matches_mock({"gpt-4o-mini": live}, mock)


def test_connection_refused_without_retries_is_502(proxy: Proxy, mock: Mock) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        ask(proxy, "refused-once", 1, model="dead-model")
    error = openai_error(failed.value.response, 502, "upstream_error")
    assert error["code"] == "upstream_unavailable"
    assert "ConnectError" in error["message"]
    assert mock.requests() == []
    counters = proxy.counters("refused-once")
    assert (counters["dead-model"]["errors"], counters["gpt-4o-mini"]["requests"]) == (1, 0)


def test_http_500_fails_over_when_in_criteria(proxy: Proxy, mock: Mock) -> None:
    mock.control(fail_models={"gpt-4": 500})
    before = proxy.counters("http500")
    assert ask(proxy, "http500", REQUESTS) == ["gpt-4o-mini"] * REQUESTS
    delta = proxy.settled("http500", before, REQUESTS)
    assert delta["gpt-4"]["errors"] == delta["gpt-4"]["requests"] == REQUESTS
    assert [r["body"]["model"] for r in mock.requests()] == ["gpt-4", "gpt-4o-mini"] * REQUESTS
    assert_matches_mock(delta, mock)


def test_http_500_passes_through_without_criterion(proxy: Proxy, mock: Mock) -> None:
    mock.control(fail_models={"gpt-4": 500})
    with pytest.raises(openai.InternalServerError) as failed:
        ask(proxy, "pass500", 1)
    assert failed.value.status_code == 500
    assert failed.value.response.headers["x-kong-llm-model"] == "openai/gpt-4"
    error = openai_error(failed.value.response, 500, "server_error")
    assert error["message"] == "Mock upstream forced failure (HTTP 500)"  # the upstream's own
    assert [r["body"]["model"] for r in mock.requests()] == ["gpt-4"]  # no second try
    assert proxy.counters("pass500")["gpt-4"]["errors"] == 1


def test_read_timeout_fails_over_then_504(proxy: Proxy, mock: Mock) -> None:
    mock.control(hang_models=["gpt-4"])
    before = proxy.counters("timeout")
    started = time.monotonic()
    assert ask(proxy, "timeout", 2) == ["gpt-4o-mini"] * 2
    assert time.monotonic() - started >= 2 * READ_TIMEOUT_MS / 1000  # each waited out gpt-4
    delta = proxy.settled("timeout", before, 2)
    assert delta["gpt-4"]["errors"] == delta["gpt-4"]["requests"] == 2
    assert_matches_mock(delta, mock)

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as failed:
        ask(proxy, "timeout", 1, model="gpt-4")
    assert time.monotonic() - started < 5
    error = openai_error(failed.value.response, 504, "upstream_error")
    assert error["code"] == "upstream_timeout"
    assert proxy.counters("timeout")["gpt-4"]["errors"] == 3


def test_invalid_200_fails_over_with_invalid_header(proxy: Proxy, mock: Mock) -> None:
    """An HTML page with status 200 is a failed attempt when invalid_header is listed."""
    mock.control(garbage_models=["gpt-4"])
    before = proxy.counters("invalid")
    assert ask(proxy, "invalid", 2) == ["gpt-4o-mini"] * 2
    with proxy.client("invalid") as client:
        stream = client.chat.completions.create(
            model="any", messages=messages("streamed"), stream=True
        )
        assert {chunk.model for chunk in stream} == {"gpt-4o-mini"}
    delta = proxy.settled("invalid", before, 3)
    assert delta["gpt-4"]["errors"] == delta["gpt-4"]["requests"] == 3
    assert delta["gpt-4"]["usage"] == pytest.approx(0, abs=1e-6)

    with pytest.raises(openai.InternalServerError) as failed:
        ask(proxy, "invalid", 1, model="gpt-4")
    error = openai_error(failed.value.response, 502, "upstream_error")
    assert "invalid response" in error["message"]


def test_invalid_200_passes_through_without_invalid_header(proxy: Proxy, mock: Mock) -> None:
    mock.control(garbage_models=["gpt-4"])
    with proxy.client("pass-invalid") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4", messages=messages("html please")
        )
    assert raw.http_response.status_code == 200
    assert raw.http_response.text.startswith("<html>")
    assert proxy.counters("pass-invalid")["gpt-4"]["errors"] == 0
