"""The Kong-compatible Admin API of a real ``tokenlb proxy`` process.

The seed's ``curl`` bodies (Kong's docs, ``tests/data/seed/admin-global.json``) are sent
unchanged to every scope's endpoint, with the shell's ``'$OPENAI_API_KEY'`` expanded as
the shell would; the answers are checked against Kong's shapes; bad input of every kind
is refused with Kong's errors and stores nothing; a PATCH changes what the proxy serves
(the mock upstream sees the new model); the admin token is enforced when set, and a
proxy whose Admin API would listen off loopback without one refuses to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.integration.test_proxy_e2e import (
    KEY,
    Mock,
    Proxy,
    messages,
    store_url_for,
    target,
)
from tests.support import free_port, start_proxy, tokenlb_command

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
ADMIN_TOKEN = "tok-admin-6d1f0c9e2b7a4455"
KINDS = ("services", "routes", "consumers", "consumer_groups", "plugins")


def seed_body() -> dict[str, Any]:
    """The seed's Admin API body, ``'$OPENAI_API_KEY'`` expanded as the shell does."""
    text = (SEED / "admin-global.json").read_text().replace("'$OPENAI_API_KEY'", KEY)
    body: dict[str, Any] = json.loads(text)
    return body


@pytest.fixture(scope="module", params=["redis"])
def admin_store_url(request: pytest.FixtureRequest) -> str | None:
    """Redis, the fleet's case. The API over the embedded store's in-memory repository is
    covered by tests/unit/test_admin_crud.py; the suite's time goes to the shared one."""
    return store_url_for(request)


@pytest.fixture(scope="module")
def proxy(
    admin_store_url: str | None,
    mock: Mock,
    process_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """A proxy whose file config is one route with its own plugin: the Admin API adds
    everything else."""
    plugin = {
        "name": "ai-proxy-advanced",
        "instance_name": "base",
        "config": {"targets": [target("base-model", mock.chat_url)]},
    }
    base = {"name": "base", "paths": ["/base"], "plugins": [plugin]}
    service = {"name": "base-service", "url": mock.url, "routes": [base]}
    config = tmp_path_factory.mktemp("admin") / "kong.yaml"
    config.write_text(yaml.safe_dump({"_format_version": "3.0", "services": [service]}))
    # OPENAI_API_KEY: what a ``{vault://env/OPENAI_API_KEY}`` reference resolves to.
    env = {"DECK_OPENAI_API_KEY": KEY, "OPENAI_API_KEY": KEY}
    process, port, admin_port = start_proxy(
        process_logs, config, redis_url=admin_store_url, env=env
    )
    try:
        yield Proxy(process, port, admin_port, config)
    finally:
        process.stop()


@pytest.fixture
def admin(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.admin_url, timeout=10) as client:
        yield client


def snapshot(admin: httpx.Client) -> dict[str, Any]:
    """Every entity the Admin API lists, and the config the proxy serves."""
    listed = {kind: admin.get(f"/{kind}", params={"size": 1000}).json()["data"] for kind in KINDS}
    listed["hash"] = admin.get("/status").json()["configuration_hash"]
    return listed


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert isinstance(body["created_at"], int)
    return body


@pytest.fixture
def scope_entities(admin: httpx.Client) -> Iterator[None]:
    """The service, route, consumer and group the seed's placeholders name."""
    created(admin.post("/services", json={"name": "openai-chat", "url": "https://api.openai.com"}))
    created(
        admin.post(
            "/services/openai-chat/routes", json={"name": "openai-chat-route", "paths": ["/openai"]}
        )
    )
    created(admin.post("/consumers", json={"username": "alice"}))
    created(admin.post("/consumer_groups", json={"name": "premium"}))
    yield
    for path in ("/consumer_groups/premium", "/consumers/alice", "/routes/openai-chat-route"):
        assert admin.delete(path).status_code == 204
    assert admin.delete("/services/openai-chat").status_code == 204


def assert_seed_plugin(plugin: dict[str, Any]) -> None:
    """A 201 for the seed body: Kong's plugin object with every default filled in."""
    assert plugin["name"] == "ai-proxy-advanced"
    assert plugin["enabled"] is True
    assert plugin["protocols"] == ["grpc", "grpcs", "http", "https"]
    assert plugin["instance_name"] is None
    assert plugin["tags"] == []
    balancer = plugin["config"]["balancer"]
    assert (balancer["algorithm"], balancer["tokens_count_strategy"]) == (
        "lowest-usage",
        "prompt-tokens",
    )
    assert (balancer["retries"], balancer["slots"], balancer["connect_timeout"]) == (
        5,
        10000,
        60000,
    )
    assert plugin["config"]["response_streaming"] == "allow"
    targets = plugin["config"]["targets"]
    assert [t["model"]["name"] for t in targets] == ["gpt-4", "gpt-4o-mini"]
    assert targets[0]["weight"] == 100
    assert targets[0]["auth"]["header_value"] == f"Bearer {KEY}"
    assert targets[0]["model"]["options"]["max_tokens"] == 512


@pytest.mark.parametrize(
    ("path", "scope", "name"),
    [
        ("/plugins/", None, None),
        ("/services/openai-chat/plugins/", "service", "openai-chat"),
        ("/routes/openai-chat-route/plugins/", "route", "openai-chat-route"),
        pytest.param("/consumers/alice/plugins/", "consumer", "alice"),
        pytest.param("/consumer_groups/premium/plugins/", "consumer_group", "premium"),
    ],
)
@pytest.mark.usefixtures("scope_entities")
def test_the_seed_body_at_every_scope(
    admin: httpx.Client, path: str, scope: str | None, name: str | None
) -> None:
    plugin = created(admin.post(path, json=seed_body()))
    assert_seed_plugin(plugin)
    scopes = {"service": None, "route": None, "consumer": None, "consumer_group": None}
    if scope is not None:
        collection = {"consumer_group": "consumer_groups"}.get(scope, f"{scope}s")
        parent = admin.get(f"/{collection}/{name}")
        parent_body = parent.json()
        parent_id = parent_body.get("consumer_group", parent_body)["id"]
        scopes[scope] = {"id": parent_id}
        listed = admin.get(f"/{collection}/{parent_id}/plugins").json()["data"]
        assert [p["id"] for p in listed] == [plugin["id"]]
    assert {k: plugin[k] for k in scopes} == scopes
    assert admin.get(f"/plugins/{plugin['id']}").json() == plugin
    # Kong: one plugin of a name per scope.
    duplicate = admin.post(path, json=seed_body())
    assert duplicate.status_code == 409
    assert duplicate.json()["name"] == "unique constraint violation"
    assert admin.delete(f"/plugins/{plugin['id']}").status_code == 204
    assert admin.get(f"/plugins/{plugin['id']}").status_code == 404


def test_a_patch_changes_what_the_proxy_serves(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    created(admin.post("/services", json={"name": "served", "url": mock.url}))
    created(admin.post("/services/served/routes", json={"name": "seed", "paths": ["/seed"]}))
    plugin = created(admin.post("/routes/seed/plugins", json=seed_body()))
    try:
        for model in ("patched-model-1", "patched-model-2"):
            patch = {"config": {"targets": [target(model, mock.chat_url)]}}
            patch["config"]["targets"][0]["auth"]["header_value"] = f"Bearer {KEY}"
            response = admin.patch(f"/plugins/{plugin['id']}", json=patch)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["config"]["balancer"]["algorithm"] == "lowest-usage"  # merged, kept
            assert body["updated_at"] >= plugin["created_at"]
            mock.reset()
            with proxy.client("seed") as client:
                reply = client.chat.completions.create(model=model, messages=messages())
            assert reply.model == model
            assert [r["body"]["model"] for r in mock.requests()] == [model]
    finally:
        assert admin.delete("/routes/seed").status_code == 204
        assert admin.delete("/services/served").status_code == 204
    assert admin.get(f"/plugins/{plugin['id']}").status_code == 404  # deleted with its route


def keyed_client(
    proxy: Proxy, key: str | None, route: str = "keyed", header: str = "apikey"
) -> openai.OpenAI:
    """An SDK client for ``/<route>`` sending ``key`` in key-auth's ``header``."""
    headers = {header: key} if key is not None else {}
    return openai.OpenAI(
        base_url=f"{proxy.url}/{route}/v1",
        api_key="sdk-placeholder",  # sent as Authorization, which key-auth does not read
        default_headers=headers,
        max_retries=0,
        timeout=15,
    )


def targets_body(model: str, mock: Mock) -> dict[str, Any]:
    body = seed_body()
    body["config"]["targets"] = [target(model, mock.chat_url)]
    body["config"]["targets"][0]["auth"]["header_value"] = f"Bearer {KEY}"
    return body


def test_plugins_scoped_through_the_api_serve_their_consumers(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    """key-auth on a route; the route's plugin for anyone, alice's own plugin for alice,
    the gold group's plugin for bob (Kong's precedence: consumer, group, route)."""
    created(admin.post("/services", json={"name": "keyed", "url": mock.url}))
    created(admin.post("/services/keyed/routes", json={"name": "keyed", "paths": ["/keyed"]}))
    key_auth = created(admin.post("/routes/keyed/plugins", json={"name": "key-auth"}))
    assert key_auth["config"]["key_names"] == ["apikey"]  # Kong's default, filled in
    plugins = [key_auth["id"]]
    plugins.append(
        created(admin.post("/routes/keyed/plugins", json=targets_body("route-model", mock)))["id"]
    )
    for name in ("alice", "bob", "carl"):
        created(admin.post("/consumers", json={"username": f"{name}-k"}))
        created(admin.post(f"/consumers/{name}-k/key-auth", json={"key": f"{name}-key-0123456"}))
    plugins.append(
        created(admin.post("/consumers/alice-k/plugins", json=targets_body("alice-model", mock)))[
            "id"
        ]
    )
    created(admin.post("/consumer_groups", json={"name": "gold"}))
    assert (
        admin.post("/consumer_groups/gold/consumers", json={"consumer": "bob-k"}).status_code == 201
    )
    plugins.append(
        created(admin.post("/consumer_groups/gold/plugins", json=targets_body("gold-model", mock)))[
            "id"
        ]
    )
    try:
        for name, model in (
            ("alice", "alice-model"),
            ("bob", "gold-model"),
            ("carl", "route-model"),
        ):
            mock.reset()
            with keyed_client(proxy, f"{name}-key-0123456") as client:
                reply = client.chat.completions.create(model=model, messages=messages())
            assert reply.model == model
            assert [r["body"]["model"] for r in mock.requests()] == [model]
        mock.reset()
        with keyed_client(proxy, None) as client, pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="route-model", messages=messages())
        assert mock.requests() == []
    finally:
        for path in (
            "/consumer_groups/gold",
            "/consumers/alice-k",
            "/consumers/bob-k",
            "/consumers/carl-k",
            "/routes/keyed",
            "/services/keyed",
        ):
            assert admin.delete(path).status_code == 204
    # Deleting the consumers and the group deleted their plugins; the route took its own.
    remaining = {p["id"] for p in admin.get("/plugins", params={"size": 1000}).json()["data"]}
    assert remaining.isdisjoint(plugins)


def test_crud_of_services_routes_consumers_and_credentials(admin: httpx.Client) -> None:
    service = created(
        admin.post("/services", json={"name": "crud", "url": "http://crud.example:81/v1"})
    )
    assert (service["protocol"], service["host"], service["port"], service["path"]) == (
        "http",
        "crud.example",
        81,
        "/v1",
    )
    assert admin.get("/services/crud").json() == service
    patched = admin.patch(f"/services/{service['id']}", json={"retries": 2}).json()
    assert (patched["retries"], patched["host"]) == (2, "crud.example")
    put = admin.put("/services/crud", json={"host": "other.example"})
    assert put.status_code == 200
    assert (put.json()["id"], put.json()["retries"], put.json()["port"]) == (service["id"], 5, 80)

    route = created(
        admin.post(
            "/routes", json={"name": "crud-route", "paths": ["/crud"], "service": {"name": "crud"}}
        )
    )
    assert route["service"] == {"id": service["id"]}
    assert [r["id"] for r in admin.get("/services/crud/routes").json()["data"]] == [route["id"]]
    refused = admin.delete("/services/crud")
    assert refused.status_code == 400
    assert refused.json()["fields"] == {"@referenced_by": "routes"}

    consumer = created(admin.post("/consumers", json={"username": "carol", "custom_id": "c-1"}))
    credential = created(admin.post("/consumers/carol/key-auth", json={"key": "carol-key-0042"}))
    assert credential["consumer"] == {"id": consumer["id"]}
    listed = admin.get(f"/consumers/{consumer['id']}/key-auth").json()["data"]
    assert [c["id"] for c in listed] == [credential["id"]]
    assert (
        admin.get(f"/consumers/carol/key-auth/{credential['id']}").json()["key"] == "carol-key-0042"
    )
    assert admin.delete("/consumers/carol").status_code == 204
    assert admin.get(f"/key-auths/{credential['id']}").status_code == 404  # cascaded

    for path in ("/routes/crud-route", "/services/crud"):
        assert admin.delete(path).status_code == 204
        assert admin.get(path).status_code == 404
    assert admin.delete("/services/crud").status_code == 204  # deleting nothing is done


def test_consumer_groups_and_their_members(admin: httpx.Client) -> None:
    group = created(admin.post("/consumer_groups", json={"name": "gold"}))
    created(admin.post("/consumers", json={"username": "dave"}))
    added = admin.post("/consumer_groups/gold/consumers", json={"consumer": "dave"})
    assert added.status_code == 201
    assert added.json()["consumer_group"]["id"] == group["id"]
    view = admin.get("/consumer_groups/gold").json()
    assert [c["username"] for c in view["consumers"]] == ["dave"]
    groups = admin.get("/consumers/dave/consumer_groups").json()["data"]
    assert [g["name"] for g in groups] == ["gold"]
    assert admin.delete("/consumer_groups/gold/consumers/dave").status_code == 204
    assert admin.get("/consumer_groups/gold/consumers").json()["data"] == []
    for path in ("/consumers/dave", "/consumer_groups/gold"):
        assert admin.delete(path).status_code == 204


def test_pages_of_more_than_a_hundred(admin: httpx.Client) -> None:
    ids = {
        created(admin.post("/consumers", json={"username": f"page-{i:03d}"}))["id"]
        for i in range(130)
    }
    seen: list[str] = []
    sizes = []
    url: str | None = "/consumers"
    for _ in range(10):
        if url is None:
            break
        page = admin.get(url).json()
        sizes.append(len(page["data"]))
        seen += [c["id"] for c in page["data"]]
        url = page["next"]
    assert url is None
    assert sizes[0] == 100
    assert ids <= set(seen)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    for consumer_id in ids:
        assert admin.delete(f"/consumers/{consumer_id}").status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        (
            "POST",
            "/plugins",
            b'{"name": "ai-proxy-advanced", ',
            400,
            {"message": "Cannot parse JSON body"},
        ),
        ("POST", "/services", {"name": "x", "colour": "red"}, 400, {"colour": "unknown field"}),
        ("POST", "/services", {"name": "x", "port": "80a"}, 400, {"port": "expected an integer"}),
        (
            "POST",
            "/plugins",
            {
                "name": "ai-proxy-advanced",
                "config": {"targets": [], "balancer": {"algorithm": "x"}},
            },
            400,
            None,
        ),
        (
            "POST",
            "/plugins",
            {"name": "ai-proxy-advanced", "workspace": "w", "config": {}},
            400,
            None,
        ),
        ("POST", "/services/no-such-service/plugins", "seed", 404, {"message": "Not found"}),
        ("POST", "/routes/no-such-route/plugins", "seed", 404, {"message": "Not found"}),
        ("POST", "/consumers/no-such-consumer/plugins", "seed", 404, {"message": "Not found"}),
        (
            "POST",
            "/plugins",
            "seed+service",
            400,
            {"service": {"id": "00000000-0000-4000-8000-000000000000"}},
        ),
        (
            "POST",
            "/routes",
            {"name": "r", "paths": ["/r"], "service": {"name": "missing"}},
            400,
            {"service": {"name": "missing"}},
        ),
        ("POST", "/no-such-collection", {}, 404, {"message": "Not found"}),
        ("PATCH", "/services/no-such-service", {"retries": 1}, 404, {"message": "Not found"}),
    ],
)
def test_bad_input_is_refused_kong_style_and_stores_nothing(
    admin: httpx.Client, method: str, path: str, body: Any, status: int, expected: Any
) -> None:
    before = snapshot(admin)
    if body == "seed":
        body = seed_body()
    elif body == "seed+service":
        body = seed_body() | {"service": {"id": "00000000-0000-4000-8000-000000000000"}}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = admin.request(
        method, path, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    answer = response.json()
    if status == 400 and "code" in answer:
        assert answer["name"] in ("schema violation", "foreign key violation")
        assert answer["message"]
        if expected is not None:
            assert answer["fields"] == expected
    elif expected is not None:
        assert answer == expected
    assert snapshot(admin) == before


def test_a_schema_violation_names_the_plugins_own_fields(admin: httpx.Client) -> None:
    body = seed_body()
    body["config"]["balancer"]["algorithm"] = "fastest"
    del body["config"]["targets"][1]["route_type"]
    answer = admin.post("/plugins", json=body).json()
    assert answer["code"] == 2
    assert answer["fields"]["config"]["balancer"]["algorithm"].startswith("expected one of: ")
    assert answer["fields"]["config"]["targets"] == [None, {"route_type": "required field missing"}]
    assert answer["message"].startswith("2 schema violations (config.balancer.algorithm: ")


def vaulted_plugin(admin: httpx.Client, mock: Mock) -> dict[str, Any]:
    """The seed body on a new route, its targets on the mock with the key referenced."""
    created(admin.post("/services", json={"name": "vaulted", "url": mock.url}))
    created(admin.post("/services/vaulted/routes", json={"name": "vaulted", "paths": ["/vaulted"]}))
    body = seed_body()
    for entry in body["config"]["targets"]:
        entry["auth"]["header_value"] = "Bearer {vault://env/OPENAI_API_KEY}"
        entry["model"]["options"]["upstream_url"] = mock.chat_url
    return created(admin.post("/routes/vaulted/plugins", json=body))


@pytest.fixture
def cleanup_vaulted(admin: httpx.Client) -> Iterator[None]:
    yield
    for path in ("/routes/vaulted", "/services/vaulted"):
        assert admin.delete(path).status_code == 204


@pytest.mark.usefixtures("cleanup_vaulted")
def test_a_secret_reference_is_returned_as_written(admin: httpx.Client, mock: Mock) -> None:
    plugin = vaulted_plugin(admin, mock)
    for text in (json.dumps(plugin), admin.get(f"/plugins/{plugin['id']}").text):
        assert "Bearer {vault://env/OPENAI_API_KEY}" in text
        assert KEY not in text


@pytest.mark.usefixtures("cleanup_vaulted")
def test_a_secret_reference_serves_with_the_secrets_value(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    vaulted_plugin(admin, mock)
    mock.reset()
    # The mock only answers requests carrying KEY: the reference was resolved.
    with proxy.client("vaulted") as client:
        reply = client.chat.completions.create(model="gpt-4", messages=messages())
    assert reply.model == "gpt-4"


# ----------------------------------------------------------------------- security


def test_the_admin_token_is_required_when_set(
    mock: Mock, process_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = tmp_path_factory.mktemp("token") / "kong.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "_format_version": "3.0",
                "plugins": [
                    {
                        "name": "ai-proxy-advanced",
                        "config": {"targets": [target("m", mock.chat_url)]},
                    }
                ],
            }
        )
    )
    env = {"DECK_OPENAI_API_KEY": KEY, "TOKENLB_ADMIN_TOKEN": ADMIN_TOKEN}
    process, _, admin_port = start_proxy(process_logs, config, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as client:
            denied = {"message": "Invalid credentials. Token or User credentials required"}
            for headers in ({}, {"Kong-Admin-Token": "wrong"}, {"Kong-Admin-Token": ""}):
                response = client.get("/plugins", headers=headers)
                assert (response.status_code, response.json()) == (401, denied)
                write = client.post("/consumers", json={"username": "x"}, headers=headers)
                assert write.status_code == 401
            allowed = client.get("/plugins", headers={"Kong-Admin-Token": ADMIN_TOKEN})
            assert allowed.status_code == 200
            assert len(allowed.json()["data"]) == 1
            assert (
                client.get("/consumers", headers={"Kong-Admin-Token": ADMIN_TOKEN}).json()["data"]
                == []
            )
            for open_path in ("/status", "/stats", "/metrics"):
                response = client.get(open_path)
                assert response.status_code == 200
                assert ADMIN_TOKEN not in response.text
    finally:
        process.stop()
    assert ADMIN_TOKEN not in process.output()


def test_the_proxy_refuses_to_start_off_loopback_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "kong.yaml"
    config.write_text((SEED / "kong-global.yaml").read_text())
    command = tokenlb_command(
        "proxy",
        "--config",
        str(config),
        "--port",
        str(free_port()),
        "--admin-host",
        "0.0.0.0",
        "--admin-port",
        str(free_port()),
    )
    env = {k: v for k, v in os.environ.items() if k != "TOKENLB_ADMIN_TOKEN"}
    env["DECK_OPENAI_API_KEY"] = KEY
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "TOKENLB_ADMIN_TOKEN" in result.stderr
    assert "0.0.0.0" in result.stderr


def curl_data(admin: httpx.Client, method: str, path: str, *fields: str) -> httpx.Response:
    """What ``curl -X METHOD URL --data F1 --data F2 ...`` sends: the fields joined by
    ``&`` as written, form-encoded."""
    return admin.request(
        method,
        path,
        content="&".join(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def test_form_bodies_as_kongs_docs_write_them(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    """Kong's docs create entities with ``curl --data``: dotted keys, ``[]`` and indexed
    arrays, numbers and booleans as text. The result serves like its JSON twin."""
    created(curl_data(admin, "POST", "/services", "name=formed", f"url={mock.url}", "retries=2"))
    route = created(
        curl_data(
            admin,
            "POST",
            "/services/formed/routes",
            "name=formed",
            "paths[]=/formed",
            "methods=POST",
            "methods=GET",
            "strip_path=true",
        )
    )
    assert (route["paths"], route["methods"], route["strip_path"]) == (
        ["/formed"],
        ["POST", "GET"],
        True,
    )
    key_auth = created(
        curl_data(admin, "POST", "/routes/formed/plugins", "name=key-auth", "config.key_names=k")
    )
    assert key_auth["config"]["key_names"] == ["k"]
    created(curl_data(admin, "POST", "/consumers", "username=formed-user"))
    created(curl_data(admin, "POST", "/consumers/formed-user/key-auth", "key=formed-key-0123"))
    plugin = created(
        curl_data(
            admin,
            "POST",
            "/routes/formed/plugins",
            "name=ai-proxy-advanced",
            "config.balancer.algorithm=round-robin",
            "config.balancer.retries=1",
            "config.targets[1].route_type=llm/v1/chat",
            "config.targets[1].model.provider=openai",
            "config.targets[1].model.name=formed-model",
            f"config.targets[1].model.options.upstream_url={mock.chat_url}",
            "config.targets[1].model.options.max_tokens=64",
            "config.targets[1].weight=50",
            "config.targets[1].auth.header_name=Authorization",
            f"config.targets[1].auth.header_value=Bearer {KEY}",
        )
    )
    balancer = plugin["config"]["balancer"]
    assert (balancer["algorithm"], balancer["retries"]) == ("round-robin", 1)
    (entry,) = plugin["config"]["targets"]
    assert (entry["weight"], entry["model"]["options"]["max_tokens"]) == (50, 64)
    try:
        patched = curl_data(admin, "PATCH", f"/plugins/{plugin['id']}", "config.balancer.retries=3")
        assert patched.status_code == 200, patched.text
        assert patched.json()["config"]["balancer"]["retries"] == 3
        mock.reset()
        with keyed_client(proxy, "formed-key-0123", "formed", header="k") as client:
            reply = client.chat.completions.create(model="formed-model", messages=messages())
        assert reply.model == "formed-model"
        assert [r["body"]["model"] for r in mock.requests()] == ["formed-model"]
    finally:
        for path in ("/consumers/formed-user", "/routes/formed", "/services/formed"):
            assert admin.delete(path).status_code == 204


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            ("name=bad", "paths[0]=/x"),
            "Cannot parse form body: form key 'paths[0]': indexes count from 1",
        ),
        (
            ("name=bad", "paths[x]=/x"),
            "Cannot parse form body: cannot read the form key 'paths[x]'",
        ),
        (("name=bad", "paths=/x", "https_redirect_status_code=lots"), None),
    ],
)
def test_a_bad_form_is_refused_and_stores_nothing(
    admin: httpx.Client, fields: tuple[str, ...], message: str | None
) -> None:
    before = snapshot(admin)
    response = curl_data(admin, "POST", "/routes", *fields)
    assert response.status_code == 400, response.text
    answer = response.json()
    if message is not None:
        assert answer == {"message": message}
    else:
        assert answer["name"] == "schema violation"
        assert "https_redirect_status_code" in answer["fields"]
    assert snapshot(admin) == before


def declarative_text(mock: Mock, model: str) -> str:
    """A whole kong.yaml, as DB-less Kong users post it: one service, route and plugin
    on the mock, the key as a vault reference the replica resolves."""
    entry = target(model, mock.chat_url)
    entry["auth"]["header_value"] = "Bearer {vault://env/OPENAI_API_KEY}"
    plugin = {"name": "ai-proxy-advanced", "config": {"targets": [entry]}}
    route = {"name": "whole", "paths": ["/whole"], "plugins": [plugin]}
    service = {"name": "whole", "url": mock.url, "routes": [route]}
    return yaml.safe_dump({"_format_version": "3.0", "services": [service]})


def test_post_config_replaces_the_whole_config_as_db_less_kong_does(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    before = admin.get("/config")
    assert before.status_code == 200
    original = before.json()["config"]
    assert "base-service" in original
    try:
        text = declarative_text(mock, "whole-model-1")
        # curl -F config=@kong.yaml
        loaded = admin.post("/config", files={"config": ("kong.yaml", text.encode())})
        assert loaded.status_code == 201, loaded.text
        body = loaded.json()
        assert [s["name"] for s in body["services"].values()] == ["whole"]
        assert [r["name"] for r in body["routes"].values()] == ["whole"]
        (plugin,) = body["plugins"].values()
        assert plugin["config"]["targets"][0]["auth"]["header_value"] == (
            "Bearer {vault://env/OPENAI_API_KEY}"
        )
        assert [e["username"] for e in admin.get("/consumers").json()["data"]] == []
        for model, send in (
            ("whole-model-1", None),
            # the file as the body, and as JSON's "config" field
            ("whole-model-2", {"content": declarative_text(mock, "whole-model-2").encode()}),
            ("whole-model-3", {"json": {"config": declarative_text(mock, "whole-model-3")}}),
        ):
            if send is not None:
                assert admin.post("/config", **send).status_code == 201
            mock.reset()
            with proxy.client("whole") as client:
                reply = client.chat.completions.create(model=model, messages=messages())
            assert reply.model == model
            assert [r["body"]["model"] for r in mock.requests()] == [model]
        # Invalid: Kong's error, nothing stored.
        kept = snapshot(admin)
        refused = admin.post("/config", content=b"_format_version: '3.0'\nservices: [{url: 7}]\n")
        assert refused.status_code == 400, refused.text
        answer = refused.json()
        assert (answer["code"], answer["name"]) == (14, "invalid declarative configuration")
        assert answer["message"].startswith("declarative config is invalid: ")
        assert snapshot(admin) == kept
    finally:
        restored = admin.post("/config", files={"config": ("kong.yaml", original.encode())})
        assert restored.status_code == 201, restored.text
    assert admin.get("/config").json()["config"] == original


def test_a_key_with_a_ttl_stops_working_when_it_runs_out(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    created(admin.post("/services", json={"name": "brief", "url": mock.url}))
    created(admin.post("/services/brief/routes", json={"name": "brief", "paths": ["/brief"]}))
    created(admin.post("/routes/brief/plugins", json={"name": "key-auth"}))
    created(admin.post("/routes/brief/plugins", json=targets_body("brief-model", mock)))
    created(admin.post("/consumers", json={"username": "brief-user"}))
    credential = created(
        admin.post("/consumers/brief-user/key-auth", json={"key": "brief-key-0123", "ttl": 2})
    )
    try:
        with keyed_client(proxy, "brief-key-0123", "brief") as client:
            reply = client.chat.completions.create(model="brief-model", messages=messages())
            assert reply.model == "brief-model"
            time.sleep(credential["created_at"] + 2 - time.time() + 0.2)
            mock.reset()
            with pytest.raises(openai.AuthenticationError):
                client.chat.completions.create(model="brief-model", messages=messages())
            assert mock.requests() == []
        # Gone from the Admin API, as Kong deletes it.
        assert admin.get(f"/consumers/brief-user/key-auth/{credential['id']}").status_code == 404
        assert admin.get("/consumers/brief-user/key-auth").json()["data"] == []
    finally:
        for path in ("/consumers/brief-user", "/routes/brief", "/services/brief"):
            assert admin.delete(path).status_code == 204
