"""``GET /metrics``: scraped from a real proxy process after real traffic, parsed with
prometheus-client's own parser, and checked against what the mock upstream served.

Harness (mock, config, proxy process) from ``test_proxy_e2e``. The store is Redis; the
degraded test gives its proxy a private redis-server so it can kill it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_proxy_e2e import (
    KEY,
    Mock,
    Proxy,
    messages,
    route,
    running_proxy,
    serve_mock,
    target,
    write_config,
)
from tests.support import free_port, start_redis

PRICES = {"gpt-4": (30.0, 60.0), "gpt-4o-mini": (0.15, 0.6)}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(proxy: Proxy) -> tuple[str, Samples]:
    """The raw text and every sample, keyed by (name, labels)."""
    response = httpx.get(f"{proxy.admin_url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def eventually(proxy: Proxy, done: Callable[[Samples], bool]) -> tuple[str, Samples]:
    """Scrape until ``done`` (streams and settles finish just after the client's reply)."""
    deadline = time.monotonic() + 5
    while True:
        text, samples = scrape(proxy)
        if done(samples) or time.monotonic() > deadline:
            return text, samples
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mock(process_logs: Path) -> Iterator[Mock]:
    yield from serve_mock(process_logs)


@pytest.fixture
def config(mock: Mock, tmp_path: Path) -> Path:
    url = mock.chat_url
    priced = [
        target(model, url, options={"input_cost": i, "output_cost": o})
        for model, (i, o) in PRICES.items()
    ]
    closed = f"http://127.0.0.1:{free_port()}/v1/chat/completions"  # nothing listens there
    routes = [
        route("chat", priced),
        route("refused", [target("dead-model", closed), target("gpt-4o-mini", url)]),
    ]
    return write_config(tmp_path / "kong.yaml", mock, routes)


def test_metrics_count_what_the_upstream_served(
    mock: Mock, config: Path, redis_url: str, process_logs: Path
) -> None:
    mock.reset()
    with running_proxy(process_logs, config, redis_url) as proxy:
        _, before = scrape(proxy)
        assert total(before, "ai_llm_requests_total") == 0  # every target starts at zero
        assert len([k for k in before if k[0] == "ai_llm_requests_total"]) == 4
        with proxy.client() as client:
            for i in range(4):
                client.chat.completions.create(model="any", messages=messages(f"plain {i}"))
            for i in range(2):
                stream = client.chat.completions.create(
                    model="any", messages=messages(f"streamed {i}"), stream=True
                )
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        served = {model: mock.counts(model) for model in PRICES}  # before the refused route's
        with proxy.client("refused") as client:
            for i in range(3):
                reply = client.chat.completions.create(model="any", messages=messages(f"r{i}"))
                assert reply.model == "gpt-4o-mini"

        selects, settles = 6 + 6, 6 + 3 + 3  # (chat, refused); successes + failed attempts
        text, samples = eventually(
            proxy,
            lambda s: (
                total(s, "tokenlb_store_roundtrip_seconds_count", operation="settle") == settles
                and total(s, "ai_llm_requests_total") == 9
            ),
        )

    assert KEY not in text
    for model, (input_cost, output_cost) in PRICES.items():
        requests, prompt, completion = served[model]
        labels = {"balancer": "chat", "ai_model": model, "ai_provider": "openai"}
        assert total(samples, "ai_llm_requests_total", **labels) == requests
        tokens = {"prompt_tokens": prompt, "completion_tokens": completion}
        tokens["total_tokens"] = prompt + completion
        for token_type, value in tokens.items():
            got = total(samples, "ai_llm_tokens_total", token_type=token_type, **labels)
            assert got == value, (model, token_type)
        cost = (prompt * input_cost + completion * output_cost) / 1e6
        assert total(samples, "ai_llm_cost_total", **labels) == pytest.approx(cost)
        assert total(samples, "ai_llm_provider_latency_ms_count", **labels) == requests
        assert total(samples, "ai_llm_provider_latency_ms_bucket", le="+Inf", **labels) == requests
        assert total(samples, "ai_llm_provider_latency_ms_sum", **labels) > 0
    assert total(samples, "ai_llm_requests_total", balancer="chat") == 6
    assert all(served[model][0] > 0 for model in PRICES)  # both targets served

    # The dead target is tried first every time (lowest usage, ties to the earlier target),
    # fails, and each request is retried on the live one.
    refused = {"balancer": "refused"}
    assert total(samples, "tokenlb_upstream_errors_total", ai_model="dead-model", **refused) == 3
    assert total(samples, "tokenlb_retries_total", ai_model="gpt-4o-mini", **refused) == 3
    assert total(samples, "tokenlb_upstream_errors_total", balancer="chat") == 0
    assert total(samples, "ai_llm_requests_total", ai_model="gpt-4o-mini", **refused) == 3

    roundtrip = "tokenlb_store_roundtrip_seconds_count"
    assert total(samples, roundtrip, operation="select", backend="redis") == selects
    assert total(samples, roundtrip, operation="settle", backend="redis") == settles
    assert total(samples, "tokenlb_store_roundtrip_seconds_sum") > 0
    assert total(samples, "tokenlb_degraded") == 0
    assert total(samples, "tokenlb_redis_outages_total") == 0


def test_histogram_buckets_are_cumulative(
    mock: Mock, config: Path, redis_url: str, process_logs: Path
) -> None:
    mock.control(latency_ms=30)
    try:
        with running_proxy(process_logs, config, redis_url) as proxy:
            with proxy.client() as client:
                for i in range(3):
                    client.chat.completions.create(model="gpt-4", messages=messages(f"h{i}"))
            _, samples = scrape(proxy)
    finally:
        mock.control(latency_ms=0)
    labels = {"balancer": "chat", "ai_model": "gpt-4"}
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (name, ls), v in samples.items()
        if name == "ai_llm_provider_latency_ms_bucket" and labels.items() <= ls
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert dict(buckets)[25.0] == 0  # the mock waited 30 ms before answering
    assert dict(buckets)[float("inf")] == 3


def test_info_matches_status_and_only_the_admin_port_serves_it(
    mock: Mock, config: Path, process_logs: Path
) -> None:
    with running_proxy(process_logs, config, None) as proxy:
        _, samples = scrape(proxy)
        status = httpx.get(f"{proxy.admin_url}/status", timeout=5).json()
        data_plane = httpx.get(f"{proxy.url}/metrics", timeout=5)
    [info] = [dict(ls) for name, ls in samples if name == "tokenlb_info"]
    assert info["configuration_hash"] == status["configuration_hash"]
    assert info["version"] == status["version"]
    assert total(samples, "tokenlb_degraded") == 0
    assert not [k for k in samples if k[0] == "tokenlb_redis_outages_total"]  # no Redis
    assert data_plane.status_code == 404  # the data plane routes /metrics like any path


def test_degraded_gauge_follows_redis(mock: Mock, config: Path, process_logs: Path) -> None:
    redis, port = start_redis(process_logs)
    try:
        with running_proxy(process_logs, config, f"redis://127.0.0.1:{port}/0") as proxy:
            ask = proxy.client()
            ask.chat.completions.create(model="any", messages=messages("before"))
            assert total(scrape(proxy)[1], "tokenlb_degraded") == 0
            redis.kill()
            ask.chat.completions.create(model="any", messages=messages("during the outage"))
            _, samples = eventually(
                proxy, lambda s: total(s, "tokenlb_store_roundtrip_seconds_count") >= 4
            )
            ask.close()
    finally:
        redis.stop()
    assert total(samples, "tokenlb_degraded") == 1
    assert total(samples, "tokenlb_redis_outages_total") == 1
    roundtrip = "tokenlb_store_roundtrip_seconds_count"
    assert total(samples, roundtrip, operation="select", backend="local") == 1
    assert total(samples, "ai_llm_requests_total", balancer="chat") == 2
