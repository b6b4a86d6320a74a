"""The balancer algorithms beyond lowest-usage through one real proxy, on both stores.

The fleet-wide promises are proven with several replicas in ``tests/cluster``; here each
algorithm's wiring (what the proxy sends the store, and settles) is checked end to end
with the OpenAI SDK, streams included. Harness in ``test_proxy_e2e``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.test_proxy_e2e import (
    KEY,
    Mock,
    Proxy,
    messages,
    openai_error,
    route,
    running_proxy,
    target,
    write_config,
)
from tokenlb_proxy.config import compile_gateway, load_document
from tokenlb_proxy.plan import BalancerPlan

MODELS = ("gpt-4", "gpt-4o-mini", "gpt-3.5-turbo")


#: Every test starts on a reset mock upstream (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_mock")


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    url = mock.chat_url
    trio = [target(model, url) for model in MODELS]
    fail_over_500 = {"failover_criteria": ["error", "http_500"]}
    hashing = {"algorithm": "consistent-hashing", **fail_over_500}
    grouped = [{**t, "weight": w} for t, w in zip(trio, (70, 70, 25), strict=True)]
    limited = [
        {**trio[0], "limits": {"requests_per_minute": 2}},
        {**trio[1], "limits": {"tokens_per_minute": 300}},
    ]
    routes = [
        route("connections", trio, {"algorithm": "least-connections"}),
        route("hashing", trio, hashing),
        route("e2e", trio[:2], {"algorithm": "lowest-latency", "latency_strategy": "e2e"}),
        route("tpot", trio[:2], {"algorithm": "lowest-latency"}),
        route("priority", grouped, {"algorithm": "priority", **fail_over_500}),
        route("budget", limited, {"algorithm": "round-robin"}),
    ]
    config = write_config(tmp_path_factory.mktemp("algorithms") / "kong.yaml", mock, routes)
    with running_proxy(process_logs, config, store_url) as running:
        yield running


def test_least_connections_rotates_an_idle_fleet_and_returns_every_lease(
    proxy: Proxy,
) -> None:
    before = proxy.counters("connections")
    served = []
    with proxy.client("connections") as client:
        for i in range(3):
            served.append(
                client.chat.completions.create(model="any", messages=messages(f"q{i}")).model
            )
        for i in range(3):
            stream = client.chat.completions.create(
                model="any", messages=messages(f"s{i}"), stream=True
            )
            served.append({chunk.model for chunk in stream}.pop())
    # One request at a time: every one finds the fleet idle, and ties rotate.
    assert served == list(MODELS) * 2
    delta = proxy.settled("connections", before, 6)
    assert {model: d["requests"] for model, d in delta.items()} == dict.fromkeys(MODELS, 2)
    assert in_flight(proxy, "connections") == dict.fromkeys(MODELS, 0)


def in_flight(proxy: Proxy, balancer: str) -> dict[str, int]:
    [plan] = [b for b in json.loads(proxy.status_text())["balancers"] if b["id"] == balancer]
    return {t["model"].removeprefix("openai/"): t["in_flight"] for t in plan["targets"]}


def plan_of(proxy: Proxy, balancer: str) -> BalancerPlan:
    gateway = compile_gateway(load_document(proxy.config, {"DECK_OPENAI_API_KEY": KEY}))
    [plan] = [p for p in gateway.balancers if p.balancer_id == balancer]
    return plan


def ask(proxy: Proxy, route_name: str, key: str | None, *, stream: bool = False) -> str:
    headers = {"X-Kong-LLM-Request-ID": key} if key is not None else {}
    with proxy.client(route_name) as client:
        if stream:
            chunks = client.chat.completions.create(
                model="any", messages=messages(), stream=True, extra_headers=headers
            )
            return {chunk.model for chunk in chunks}.pop()
        reply = client.chat.completions.create(
            model="any", messages=messages(), extra_headers=headers
        )
        return reply.model


def test_consistent_hashing_sends_a_key_where_its_ranking_says(proxy: Proxy) -> None:
    hashing = plan_of(proxy, "hashing").hashing
    assert hashing is not None
    keys = [f"session-{n}" for n in range(24)]
    expected = {key: MODELS[hashing.order(key)[0]] for key in keys}
    served = {key: ask(proxy, "hashing", key) for key in keys}
    assert served == expected
    assert len(set(served.values())) == 3  # the keys spread over every target
    # Streams and repeats land on the same target.
    assert {key: ask(proxy, "hashing", key, stream=True) for key in keys[:6]} == {
        key: expected[key] for key in keys[:6]
    }


def test_consistent_hashing_fails_over_along_the_ranking(proxy: Proxy, mock: Mock) -> None:
    hashing = plan_of(proxy, "hashing").hashing
    assert hashing is not None
    key = "session-failing"
    first, second, _ = (MODELS[i] for i in hashing.order(key))
    mock.control(fail_models={first: 500})
    assert ask(proxy, "hashing", key) == second
    assert [r["body"]["model"] for r in mock.requests()] == [first, second]


def test_consistent_hashing_without_the_header_is_round_robin(proxy: Proxy) -> None:
    served = [ask(proxy, "hashing", None) for _ in range(6)]
    assert sorted(served) == sorted(MODELS * 2)
    assert served[:3] != [served[0]] * 3


def latencies(proxy: Proxy, balancer: str) -> dict[str, float | None]:
    [plan] = [b for b in json.loads(proxy.status_text())["balancers"] if b["id"] == balancer]
    return {t["model"].removeprefix("openai/"): t["latency"] for t in plan["targets"]}


@pytest.mark.parametrize("strategy", ["e2e", "tpot"])
def test_lowest_latency_measures_each_target_then_keeps_to_the_fastest(
    proxy: Proxy, mock: Mock, strategy: str
) -> None:
    mock.control(latency_ms=40)
    before = proxy.counters(strategy)
    served = [ask(proxy, strategy, None) for _ in range(2)]
    assert served == ["gpt-4", "gpt-4o-mini"]  # each explored once, in order
    proxy.settled(strategy, before, 2)
    measured = latencies(proxy, strategy)
    assert None not in measured.values()
    fastest = min(measured, key=lambda model: measured[model] or 0.0)
    assert ask(proxy, strategy, None, stream=True) == fastest
    for model, value in measured.items():
        assert value is not None
        if strategy == "e2e":
            assert value >= 40  # the upstream's own 40 ms, and then some
        else:
            # ms per output token: 40 ms over the mock's 24-120 tokens.
            tokens = mock.counts(model)[2] / mock.counts(model)[0]
            assert 40 / tokens <= value <= 5 * 40 / tokens


def test_priority_uses_the_lower_group_only_when_the_top_group_fails(
    proxy: Proxy, mock: Mock
) -> None:
    assert [ask(proxy, "priority", None) for _ in range(4)] == ["gpt-4", "gpt-4o-mini"] * 2
    mock.reset()
    mock.control(fail_models={"gpt-4": 500, "gpt-4o-mini": 500})
    assert ask(proxy, "priority", None) == "gpt-3.5-turbo"
    upstream = [r["body"]["model"] for r in mock.requests()]
    assert sorted(upstream[:2]) == ["gpt-4", "gpt-4o-mini"]
    assert upstream[2:] == ["gpt-3.5-turbo"]


def test_budgets_skip_full_targets_then_answer_429_with_retry_after(proxy: Proxy) -> None:
    """gpt-4 may serve 2 requests a minute, gpt-4o-mini 300 tokens; each request reserves
    its prompt plus its max_tokens (100), then settles to what it used."""
    used: dict[str, list[int]] = {"gpt-4": [], "gpt-4o-mini": []}
    refused: openai.RateLimitError | None = None
    with proxy.client("budget") as client:
        for i in range(12):
            try:
                reply = client.chat.completions.create(
                    model="any", messages=messages(f"q{i}"), max_tokens=100
                )
            except openai.RateLimitError as exc:
                refused = exc
                break
            assert reply.usage is not None
            used[reply.model].append(reply.usage.total_tokens)
    assert len(used["gpt-4"]) == 2
    assert len(used["gpt-4o-mini"]) >= 2
    assert sum(used["gpt-4o-mini"]) <= 300
    assert refused is not None
    # The type is the limit holding back the target that frees up first, as OpenAI says it.
    limit = refused.response.json()["error"]["type"]
    assert limit in ("tokens", "requests")
    error = openai_error(refused.response, 429, limit)
    assert error["code"] == "rate_limit_exceeded"
    assert "budget" in error["message"]
    assert 1 <= int(refused.response.headers["retry-after"]) <= 60
