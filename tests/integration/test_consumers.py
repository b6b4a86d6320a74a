"""Consumers end to end: a real ``tokenlb proxy`` (embedded and Redis store), the mock
upstream, the official OpenAI SDK.

The config replays the seed's consumer and consumer-group kong.yaml blocks (pointed at the
mock, and the group's models renamed so the mock tells the two instances apart), completed
with the consumers, key-auth and a route plugin and a global plugin as fallbacks. Which
instance served a request shows in the model the mock saw and in that balancer's /status
counters.
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
import yaml

from tests.integration.test_proxy_e2e import KEY, Mock, Proxy, messages, target
from tests.support import start_proxy

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
ALICE_KEY = "alice-consumer-key-7d1e"
BOB_KEY = "bob-consumer-key-from-env-91c4"
CAROL_KEY = "carol-consumer-key-05ab"
#: The premium group's seed block, with its models renamed.
PREMIUM_MODELS = {"gpt-4": "gpt-4.1", "gpt-4o-mini": "gpt-4.1-mini"}

pytestmark = pytest.mark.usefixtures("fresh_mock")


def seed_plugin(name: str, mock: Mock, models: dict[str, str] | None = None) -> dict[str, Any]:
    """The seed block's plugin, its targets pointed at the mock."""
    plugin: dict[str, Any] = yaml.safe_load((SEED / name).read_text())["plugins"][0]
    for entry in plugin["config"]["targets"]:
        entry["model"]["options"]["upstream_url"] = mock.chat_url
        entry["model"]["name"] = (models or {}).get(entry["model"]["name"], entry["model"]["name"])
    return plugin


def fallback_plugin(model: str, mock: Mock, **scope: str) -> dict[str, Any]:
    entry = target(model, mock.chat_url)
    # This one takes the upstream key from Kong's env vault instead of a decK variable.
    entry["auth"]["header_value"] = "Bearer {vault://env/openai-key}"
    return {"name": "ai-proxy-advanced", **scope, "config": {"targets": [entry]}}


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    doc = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "openai-chat",
                "url": mock.url,
                "routes": [
                    {"name": "chat", "paths": ["/v1/chat/completions"], "methods": ["POST"]},
                    {"name": "other", "paths": ["/other/v1/chat/completions"]},
                ],
            }
        ],
        "plugins": [
            seed_plugin("kong-consumer.yaml", mock),
            seed_plugin("kong-consumer-group.yaml", mock, PREMIUM_MODELS),
            fallback_plugin("route-model", mock, route="chat"),
            fallback_plugin("global-model", mock),
            {"name": "key-auth", "config": {"key_names": ["apikey", "x-api-key"]}},
        ],
        "consumers": [
            {"username": "alice", "keyauth_credentials": [{"key": ALICE_KEY}]},
            # bob's key is a secret reference: the config file never holds it.
            {"username": "bob", "custom_id": "crm-42", "groups": ["premium"]},
            {"username": "carol", "keyauth_credentials": [{"key": CAROL_KEY}]},
        ],
        "keyauth_credentials": [{"consumer": "bob", "key": "{vault://env/bob-key}"}],
        "consumer_groups": [{"name": "premium"}],
    }
    config = tmp_path_factory.mktemp("consumers") / "kong.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {"DECK_OPENAI_API_KEY": KEY, "OPENAI_KEY": KEY, "BOB_KEY": BOB_KEY}
    process, port, admin_port = start_proxy(process_logs, config, redis_url=store_url, env=env)
    try:
        yield Proxy(process, port, admin_port, config)
    finally:
        process.stop()


def client(proxy: Proxy, key: str | None, route: str = "chat") -> openai.OpenAI:
    base = proxy.url if route == "chat" else f"{proxy.url}/{route}"
    headers = {"apikey": key} if key is not None else {}
    # The SDK's own api_key goes out as Authorization, which key-auth does not read.
    return openai.OpenAI(
        base_url=f"{base}/v1",
        api_key="sdk-placeholder",
        default_headers=headers,
        max_retries=0,
        timeout=15,
    )


def served_models(mock: Mock) -> list[str]:
    return [r["body"]["model"] for r in mock.requests()]


def balancer_requests(proxy: Proxy) -> dict[str, int]:
    """Requests each balancer has counted, from /status."""
    status = json.loads(proxy.status_text())
    return {plan["id"]: sum(t["requests"] for t in plan["targets"]) for plan in status["balancers"]}


def test_each_consumer_is_served_by_its_own_plugin_instance(proxy: Proxy, mock: Mock) -> None:
    before = balancer_requests(proxy)
    for key in (ALICE_KEY, BOB_KEY, CAROL_KEY):
        with client(proxy, key) as sdk:
            completion = sdk.chat.completions.create(model="gpt-4", messages=messages())
        assert completion.choices[0].message.content
    alice, bob, carol = mock.requests()
    # alice: the consumer-scoped seed block (the client's model picks its gpt-4 target).
    assert alice["body"]["model"] == "gpt-4"
    # bob: the group's block, whose models are renamed; gpt-4 is not one of them.
    assert bob["body"]["model"] in PREMIUM_MODELS.values()
    # carol has no plugin of her own nor a group: the route's plugin.
    assert carol["body"]["model"] == "route-model"
    # Kong's upstream headers; the consumer's key never reaches the upstream.
    assert alice["headers"]["x-consumer-username"] == "alice"
    assert bob["headers"]["x-consumer-custom-id"] == "crm-42"
    assert bob["headers"]["x-consumer-groups"] == "premium"
    for recorded in (alice, bob, carol):
        assert recorded["headers"]["authorization"] == f"Bearer {KEY}"
        text = json.dumps(recorded)
        assert all(k not in text for k in (ALICE_KEY, BOB_KEY, CAROL_KEY))
    after = wait_for_counts(proxy, before, 3)
    assert after == {"consumer:alice": 1, "consumer_group:premium": 1, "route:chat": 1}


def test_the_global_plugin_serves_where_no_other_applies(proxy: Proxy, mock: Mock) -> None:
    with client(proxy, CAROL_KEY, "other") as sdk:
        sdk.chat.completions.create(model="any", messages=messages())
    # The key may also travel in the query string, under any of key_names.
    with openai.OpenAI(
        base_url=f"{proxy.url}/other/v1",
        api_key="sdk-placeholder",
        default_query={"x-api-key": ALICE_KEY},
        max_retries=0,
        timeout=15,
    ) as sdk:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=messages())
    assert served_models(mock) == ["global-model", "gpt-4o-mini"]
    assert ALICE_KEY not in json.dumps(mock.requests())


def test_a_consumer_streams_through_its_instance(proxy: Proxy, mock: Mock) -> None:
    with client(proxy, BOB_KEY) as sdk:
        stream = sdk.chat.completions.create(model="gpt-4.1-mini", messages=messages(), stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    assert served_models(mock) == ["gpt-4.1-mini"]


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "No API key found in request"), ("not-a-consumer-key", "Unauthorized")],
)
def test_missing_or_wrong_key_is_kongs_401_and_nothing_is_forwarded_or_counted(
    proxy: Proxy, mock: Mock, key: str | None, message: str
) -> None:
    before = balancer_requests(proxy)
    with client(proxy, key) as sdk, pytest.raises(openai.AuthenticationError) as info:
        sdk.chat.completions.create(model="gpt-4", messages=messages())
    response = info.value.response
    assert response.status_code == 401
    assert response.json() == {"message": message}
    assert response.headers["www-authenticate"] == "Key"
    assert "not-a-consumer-key" not in proxy.tail()
    # A raw request with a body says the same: refused before the body is read.
    headers = {"apikey": key} if key else {}
    raw = httpx.post(f"{proxy.url}/v1/chat/completions", headers=headers, content=b"{not json")
    assert raw.status_code == 401
    assert mock.requests() == []
    assert balancer_requests(proxy) == before


def wait_for_counts(proxy: Proxy, before: dict[str, int], total: int) -> dict[str, int]:
    """Per-balancer request deltas once ``total`` requests settled (settling is async)."""
    deadline = time.monotonic() + 5
    while True:
        now = balancer_requests(proxy)
        deltas = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
        if sum(deltas.values()) >= total or time.monotonic() > deadline:
            return deltas
        time.sleep(0.02)
