"""The exposition text of ``ProxyMetrics``: what Prometheus's own parser reads back.

The end-to-end counts (real traffic, real processes) are in
``tests/integration/test_metrics.py``; these pin the text-format details.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tokenlb_proxy.config import compile_gateway, parse_document
from tokenlb_proxy.metrics import Histogram, ProxyMetrics
from tokenlb_proxy.plan import Gateway
from tokenlb_proxy.store.base import Settlement

SECRET = "sk-unit-metrics-secret-4b1d"


def gateway(*models: str) -> Gateway:
    targets: list[dict[str, Any]] = [
        {
            "model": {"provider": "openai", "name": name},
            "route_type": "llm/v1/chat",
            "auth": {"header_name": "Authorization", "header_value": f"Bearer {SECRET}"},
        }
        for name in models
    ]
    plugin = {"name": "ai-proxy-advanced", "instance_name": "unit", "config": {"targets": targets}}
    return compile_gateway(parse_document(json.dumps({"plugins": [plugin]}), {}))


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(sample.name, []).append((sample.labels, sample.value))
    return families


def settlement(prompt: int, completion: int, cost: float = 0.0) -> Settlement:
    return Settlement(
        target_id="unused",
        reserved=0.0,
        reserved_at_ms=0,
        actual=float(prompt + completion),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
        failed=False,
    )


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    histogram = Histogram((1, 5, 10))
    for value in (0.5, 1, 5, 7, 10, 11):
        histogram.observe(value)
    text = "# TYPE h histogram\n" + "\n".join(histogram.lines("h", 'a="b"')) + "\n"
    buckets = {labels["le"]: value for labels, value in parsed(text)["h_bucket"]}
    assert buckets == {"1": 2, "5": 3, "10": 5, "+Inf": 6}
    assert parsed(text)["h_sum"] == [({"a": "b"}, 34.5)]
    assert parsed(text)["h_count"] == [({"a": "b"}, 6)]


def test_label_values_are_escaped_and_read_back() -> None:
    odd = 'model "quoted" \\ back\nslash'
    metrics = ProxyMetrics(gateway(odd))
    text = metrics.render(degraded=False, redis_outages=None)
    [(labels, value)] = parsed(text)["ai_llm_requests_total"]
    assert labels["ai_model"] == odd
    assert value == 0


def test_counts_tokens_cost_and_latency_per_target() -> None:
    gw = gateway("gpt-4", "gpt-4o-mini")
    metrics = ProxyMetrics(gw)
    plan = gw.balancers[0]
    started = time.perf_counter() - 0.012  # 12 ms ago
    metrics.succeeded(plan, plan.targets[1], settlement(25, 12, 0.00037), started)
    metrics.succeeded(plan, plan.targets[1], settlement(5, 3), started)
    metrics.failed(plan, plan.targets[0])
    metrics.retried(plan, plan.targets[1])
    metrics.store_call("select", "redis", 0.0003)
    families = parsed(metrics.render(degraded=True, redis_outages=2))

    def value(name: str, model: str, **extra: str) -> float:
        wanted = {"ai_model": model, **extra}.items()
        [v] = [v for labels, v in families[name] if wanted <= labels.items()]
        return v

    assert value("ai_llm_requests_total", "gpt-4o-mini") == 2
    assert value("ai_llm_requests_total", "gpt-4") == 0
    assert value("ai_llm_tokens_total", "gpt-4o-mini", token_type="prompt_tokens") == 30
    assert value("ai_llm_tokens_total", "gpt-4o-mini", token_type="completion_tokens") == 15
    assert value("ai_llm_tokens_total", "gpt-4o-mini", token_type="total_tokens") == 45
    assert value("ai_llm_cost_total", "gpt-4o-mini") == 0.00037
    assert value("ai_llm_provider_latency_ms_bucket", "gpt-4o-mini", le="10") == 0
    assert value("ai_llm_provider_latency_ms_bucket", "gpt-4o-mini", le="15") == 2
    assert value("tokenlb_upstream_errors_total", "gpt-4") == 1
    assert value("tokenlb_retries_total", "gpt-4o-mini") == 1
    assert families["tokenlb_store_roundtrip_seconds_count"] == [
        ({"operation": "select", "backend": "redis"}, 1)
    ]
    assert families["tokenlb_degraded"] == [({}, 1)]
    assert families["tokenlb_redis_outages_total"] == [({}, 2)]
    assert {ls["balancer"] for ls, _ in families["ai_llm_requests_total"]} == {"unit"}


def test_no_auth_value_reaches_the_text() -> None:
    gw = gateway("gpt-4")
    metrics = ProxyMetrics(gw)
    plan = gw.balancers[0]
    metrics.succeeded(plan, plan.targets[0], settlement(1, 1), time.perf_counter())
    assert SECRET not in metrics.render(degraded=False, redis_outages=0)
