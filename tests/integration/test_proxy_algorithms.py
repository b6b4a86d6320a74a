"""The balancer algorithms beyond lowest-usage through one real proxy, on both stores.

The fleet-wide promises are proven with several replicas in ``tests/cluster``; here each
algorithm's wiring (what the proxy sends the store, and settles) is checked end to end
with the OpenAI SDK, streams included. Harness in ``test_proxy_e2e``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_proxy_e2e import (
    Mock,
    Proxy,
    messages,
    route,
    running_proxy,
    serve_mock,
    store_url_for,
    target,
    write_config,
)

MODELS = ("gpt-4", "gpt-4o-mini", "gpt-3.5-turbo")


@pytest.fixture(scope="module")
def mock(process_logs: Path) -> Iterator[Mock]:
    yield from serve_mock(process_logs)


@pytest.fixture(autouse=True)
def _fresh_mock(mock: Mock) -> None:
    mock.reset()


@pytest.fixture(scope="module", params=["local", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return store_url_for(request)


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    url = mock.chat_url
    trio = [target(model, url) for model in MODELS]
    routes = [
        route("connections", trio, {"algorithm": "least-connections"}),
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
