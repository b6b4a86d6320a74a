"""The circuit breaker through a real proxy and mock, on both stores.

``max_fails`` failures within ``fail_timeout`` take a target out of rotation: requests stop
reaching it (the mock never sees them) until ``fail_timeout`` has passed. An upstream 429
with ``Retry-After`` does the same whatever ``max_fails`` says. When every target is out,
the client gets 503 with ``Retry-After``. Harness in ``test_proxy_e2e``.
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
    messages,
    openai_error,
    route,
    running_proxy,
    target,
    write_config,
)

FAIL_TIMEOUT_MS = 1500
HTTP_500 = ["error", "timeout", "http_500"]


#: Every test starts on a reset mock upstream (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_mock")


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    url = mock.chat_url
    pair = [target("gpt-4", url), target("gpt-4o-mini", url)]
    breaker = {"max_fails": 2, "fail_timeout": FAIL_TIMEOUT_MS, "failover_criteria": HTTP_500}
    routes = [
        route("breaker", pair, breaker),
        route("uncounted", pair, {**breaker, "failover_criteria": ["error", "timeout"]}),
        route("limited", pair),
        route("lonely", [target("gpt-4", url)], {**breaker, "max_fails": 1}),
    ]
    config = write_config(tmp_path_factory.mktemp("breaker") / "kong.yaml", mock, routes)
    with running_proxy(process_logs, config, store_url) as running:
        yield running


def served(proxy: Proxy, route_name: str, count: int, model: str = "any") -> list[str]:
    with proxy.client(route_name) as client:
        return [
            client.chat.completions.create(model=model, messages=messages(f"q{i}")).model
            for i in range(count)
        ]


def upstream_models(mock: Mock) -> list[str]:
    return [r["body"]["model"] for r in mock.requests()]


def test_breaker_opens_after_max_fails_and_closes_after_fail_timeout(
    proxy: Proxy, mock: Mock
) -> None:
    mock.control(fail_models={"gpt-4": 500})
    # lowest-usage keeps trying the idle gpt-4 first; each try fails over.
    assert served(proxy, "breaker", 2) == ["gpt-4o-mini"] * 2
    assert upstream_models(mock) == ["gpt-4", "gpt-4o-mini"] * 2
    opened_at = time.monotonic()

    # Two failures: gpt-4 is out of rotation, requests no longer reach it.
    assert served(proxy, "breaker", 4) == ["gpt-4o-mini"] * 4
    assert upstream_models(mock)[4:] == ["gpt-4o-mini"] * 4
    # Even a client asking for gpt-4 by name cannot reach it now.
    with pytest.raises(openai.InternalServerError) as out:
        served(proxy, "breaker", 1, model="gpt-4")
    error = openai_error(out.value.response, 503, "service_unavailable")
    assert "out of rotation" in error["message"]
    assert 1 <= int(out.value.response.headers["retry-after"]) <= 2

    # After fail_timeout it is tried again (and, still failing, fails over once more).
    time.sleep(max(0.0, FAIL_TIMEOUT_MS / 1000 - (time.monotonic() - opened_at)) + 0.2)
    mock.reset()
    mock.control(fail_models={"gpt-4": 500})
    assert served(proxy, "breaker", 1) == ["gpt-4o-mini"]
    assert upstream_models(mock) == ["gpt-4", "gpt-4o-mini"]


def test_statuses_outside_failover_criteria_do_not_count(proxy: Proxy, mock: Mock) -> None:
    mock.control(fail_models={"gpt-4": 500})
    for _ in range(4):
        with pytest.raises(openai.InternalServerError) as failed:
            served(proxy, "uncounted", 1)
        assert failed.value.status_code == 500  # passed through: not a target failure
    assert upstream_models(mock) == ["gpt-4"] * 4


def test_429_retry_after_takes_the_target_out_until_then(proxy: Proxy, mock: Mock) -> None:
    # max_fails is 0 (off) on this route and http_429 is not a failover criterion: the
    # client sees the 429, and the target still leaves rotation for Retry-After.
    mock.control(fail_models={"gpt-4": 429}, retry_after=2)
    with pytest.raises(openai.RateLimitError) as limited:
        served(proxy, "limited", 1)
    assert limited.value.response.headers["retry-after"] == "2"
    limited_at = time.monotonic()

    assert served(proxy, "limited", 3) == ["gpt-4o-mini"] * 3
    assert upstream_models(mock) == ["gpt-4"] + ["gpt-4o-mini"] * 3

    time.sleep(max(0.0, 2.0 - (time.monotonic() - limited_at)) + 0.2)
    mock.control(fail_models={})
    assert served(proxy, "limited", 1) == ["gpt-4"]


def test_every_target_out_is_503_with_retry_after(proxy: Proxy, mock: Mock) -> None:
    mock.control(fail_models={"gpt-4": 500})
    with pytest.raises(openai.InternalServerError) as first:
        served(proxy, "lonely", 1)
    assert first.value.status_code == 500  # the upstream's own answer, its last failure

    with pytest.raises(openai.InternalServerError) as out:
        served(proxy, "lonely", 1)
    error = openai_error(out.value.response, 503, "service_unavailable")
    assert error["code"] == "no_target_available"
    assert int(out.value.response.headers["retry-after"]) in (1, 2)
    assert upstream_models(mock) == ["gpt-4"]  # the second request never left the gateway
