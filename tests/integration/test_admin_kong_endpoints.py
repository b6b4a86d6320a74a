"""Kong's node endpoints on a real ``tokenlb proxy``'s admin port: ``/``,
``/plugins/enabled``, ``/schemas/...``, the ``validate`` endpoints and ``/tags``, plus
the shape of every refusal on that port.

The replica runs as a careful operator runs it: Redis behind a password, the Admin API
behind a token, the upstream key from a decK ``${{ env }}`` placeholder, and none of the
three may show in ``GET /``. Its config is one global plugin and no route, so it also
serves the default ``POST /v1/chat/completions`` route until the Admin API adds a route.
The schema answers are checked against what a POST of the same body really fills in and
refuses, and every validate against the stored config version, which must not move.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.integration.test_proxy_e2e import KEY, Mock, Proxy, messages, openai_error, target
from tests.support import ManagedProcess, start_proxy, start_redis
from tokenlb_proxy import __version__

ADMIN_TOKEN = "tok-admin-node-8c41e7a95b3d"
REDIS_PASSWORD = "redis-pass-3f9e1c77d2a4"
SECRETS = (ADMIN_TOKEN, REDIS_PASSWORD, KEY)
PLUGINS = ["ai-proxy-advanced", "key-auth"]


@pytest.fixture(scope="module")
def guarded_redis(process_logs: Path) -> Iterator[int]:
    """A redis-server of this module's own that wants a password."""
    process, port = start_redis(process_logs, None, "--requirepass", REDIS_PASSWORD)
    try:
        yield port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def proxy(
    guarded_redis: int,
    mock: Mock,
    process_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """One global plugin on the mock, no route: the default chat route serves it."""
    plugin = {"name": "ai-proxy-advanced", "config": {"targets": [target("m", mock.chat_url)]}}
    config = tmp_path_factory.mktemp("node") / "kong.yaml"
    config.write_text(yaml.safe_dump({"_format_version": "3.0", "plugins": [plugin]}))
    env = {"DECK_OPENAI_API_KEY": KEY, "TOKENLB_ADMIN_TOKEN": ADMIN_TOKEN}
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{guarded_redis}/0"
    process, port, admin_port = start_proxy(process_logs, config, redis_url=redis_url, env=env)
    try:
        yield Proxy(process, port, admin_port, config)
    finally:
        process.stop()
    assert_no_secret(process)


def assert_no_secret(process: ManagedProcess) -> None:
    output = process.output()
    for secret in SECRETS:
        assert secret not in output


@pytest.fixture
def admin(proxy: Proxy) -> Iterator[httpx.Client]:
    headers = {"Kong-Admin-Token": ADMIN_TOKEN}
    with httpx.Client(base_url=proxy.admin_url, headers=headers, timeout=10) as client:
        yield client


def config_version(admin: httpx.Client) -> int:
    version: int = admin.get("/status").json()["config_version"]
    return version


def everything(admin: httpx.Client) -> dict[str, Any]:
    """Every entity the Admin API lists, and the stored config version."""
    kinds = ("services", "routes", "consumers", "consumer_groups", "plugins", "key-auths")
    listed = {kind: admin.get(f"/{kind}", params={"size": 1000}).json()["data"] for kind in kinds}
    return {"version": config_version(admin), **listed}


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def field(fields: list[dict[str, Any]], *path: str) -> dict[str, Any]:
    """The descriptor at ``path`` in Kong's ``fields`` list (records and array elements
    are stepped into)."""
    name, *rest = path
    (descriptor,) = (f[name] for f in fields if name in f)
    if descriptor["type"] == "array" and descriptor["elements"]["type"] == "record" and rest:
        descriptor = descriptor["elements"]
    found: dict[str, Any] = field(descriptor["fields"], *rest) if rest else descriptor
    return found


def chat(proxy: Proxy, path: str) -> httpx.Response:
    body = {"model": "m", "messages": messages()}
    return httpx.post(f"{proxy.url}{path}/v1/chat/completions", json=body, timeout=15)


# --------------------------------------------------------------------------- GET /


def test_node_info_tells_tokenlbs_facts(admin: httpx.Client, proxy: Proxy) -> None:
    response = admin.get("/")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["tagline"] == "Welcome to tokenlb"
    assert info["version"] == __version__
    assert info["hostname"] == socket.gethostname()
    assert str(uuid.UUID(info["node_id"])) == info["node_id"]
    assert admin.get("/").json()["node_id"] == info["node_id"]  # one id per process
    plugins = info["plugins"]
    assert sorted(plugins["available_on_server"]) == PLUGINS
    assert plugins["enabled_in_cluster"] == ["ai-proxy-advanced"]
    configuration = info["configuration"]
    assert configuration["database"] == "redis"
    assert configuration["admin_listen"] == [proxy.admin_url.removeprefix("http://")]
    assert configuration["proxy_listen"] == [proxy.url.removeprefix("http://")]
    assert configuration["rbac"] == "on"
    assert configuration["declarative_config"] == str(proxy.config)
    # The config's plugins are what is "enabled in cluster".
    key_auth = created(admin.post("/plugins", json={"name": "key-auth", "enabled": False}))
    try:
        assert sorted(admin.get("/").json()["plugins"]["enabled_in_cluster"]) == PLUGINS
    finally:
        assert admin.delete(f"/plugins/{key_auth['id']}").status_code == 204


def test_node_info_shows_no_secret_and_wants_the_token(admin: httpx.Client, proxy: Proxy) -> None:
    text = admin.get("/").text
    for secret in SECRETS:
        assert secret not in text
    refused = httpx.get(f"{proxy.admin_url}/", timeout=10)
    assert refused.status_code == 401
    # /status stays open, as before.
    assert httpx.get(f"{proxy.admin_url}/status", timeout=10).status_code == 200


def test_plugins_enabled(admin: httpx.Client) -> None:
    response = admin.get("/plugins/enabled")
    assert (response.status_code, response.json()) == (200, {"enabled_plugins": PLUGINS})


# ------------------------------------------------------------------------- schemas


def test_the_plugin_schema_is_what_a_post_fills_in_and_refuses(admin: httpx.Client) -> None:
    response = admin.get("/schemas/plugins/ai-proxy-advanced")
    assert response.status_code == 200, response.text
    schema = response.json()
    assert [next(iter(f)) for f in schema["fields"]] == ["protocols", "config"]
    fields = schema["fields"]
    algorithm = field(fields, "config", "balancer", "algorithm")
    retries = field(fields, "config", "balancer", "retries")
    weight = field(fields, "config", "targets", "weight")
    assert (algorithm["type"], algorithm["required"]) == ("string", True)
    assert "lowest-usage" in algorithm["one_of"]
    assert (weight["type"], weight["between"]) == ("integer", [1, 65535])
    assert field(fields, "config", "targets")["required"] is True
    assert field(fields, "config", "targets", "model", "name")["required"] is False

    created(admin.post("/services", json={"name": "schema-svc", "url": "http://u.example"}))
    created(admin.post("/services/schema-svc/routes", json={"name": "sch", "paths": ["/sch"]}))
    try:
        entry = {"route_type": "llm/v1/chat", "model": {"provider": "openai", "name": "m"}}
        body = {"name": "ai-proxy-advanced", "config": {"targets": [entry]}}
        plugin = created(admin.post("/routes/sch/plugins", json=body))
        config = plugin["config"]
        assert config["balancer"]["algorithm"] == algorithm["default"]
        assert config["balancer"]["retries"] == retries["default"]
        assert config["targets"][0]["weight"] == weight["default"]
        assert plugin["protocols"] == field(fields, "protocols")["default"]
        assert admin.delete(f"/plugins/{plugin['id']}").status_code == 204

        for changed, error in (
            ({"balancer": {"algorithm": "fastest"}}, ("balancer", "algorithm")),
            ({"targets": [{**entry, "weight": 65536}]}, ("targets", 0, "weight")),
        ):
            refused = admin.post(
                "/routes/sch/plugins", json=body | {"config": body["config"] | changed}
            )
            assert refused.status_code == 400, refused.text
            where: Any = refused.json()["fields"]["config"]
            for step in error:
                where = where[step]
            if error[-1] == "algorithm":
                assert where == f"expected one of: {', '.join(algorithm['one_of'])}"
            else:
                assert where == f"value must be at most {weight['between'][1]}"

        key_auth_schema = admin.get("/schemas/plugins/key-auth").json()["fields"]
        key_auth = created(admin.post("/routes/sch/plugins", json={"name": "key-auth"}))
        assert (
            key_auth["config"]["key_names"]
            == field(key_auth_schema, "config", "key_names")["default"]
        )
    finally:
        assert admin.delete("/routes/sch").status_code == 204
        assert admin.delete("/services/schema-svc").status_code == 204


def test_an_entity_schema_is_what_a_post_fills_in(admin: httpx.Client) -> None:
    fields = admin.get("/schemas/routes").json()["fields"]
    assert field(fields, "service") == {
        "type": "foreign",
        "required": False,
        "reference": "services",
    }
    assert "plugins" not in {next(iter(f)) for f in fields}  # nested: not a route body's field
    route = created(admin.post("/routes", json={"name": "schema-route", "paths": ["/sr"]}))
    try:
        for name in ("protocols", "strip_path", "path_handling", "https_redirect_status_code"):
            assert route[name] == field(fields, name)["default"], name
    finally:
        assert admin.delete("/routes/schema-route").status_code == 204


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/schemas/plugins/rate-limiting", "No plugin named 'rate-limiting'"),
        ("/schemas/upstreams", "No entity named 'upstreams'"),
    ],
)
def test_an_unknown_schema_is_kongs_404(admin: httpx.Client, path: str, message: str) -> None:
    response = admin.get(path)
    assert (response.status_code, response.json()) == (404, {"message": message})


# ------------------------------------------------------------------------ validate

SEED_ENTRY = {"route_type": "llm/v1/chat", "model": {"provider": "openai", "name": "gpt-4"}}
ON_ROUTE = {"name": "ai-proxy-advanced", "route": {"name": "validated"}}


@pytest.fixture
def validated_route(admin: httpx.Client) -> Iterator[None]:
    """A route without a plugin, for plugin bodies a real POST can be compared with."""
    created(admin.post("/routes", json={"name": "validated", "paths": ["/validated"]}))
    yield
    assert admin.delete("/routes/validated").status_code == 204


@pytest.mark.parametrize(
    ("entity", "body", "valid"),
    [
        ("plugins", ON_ROUTE | {"config": {"targets": [SEED_ENTRY]}}, True),
        ("plugins", ON_ROUTE | {"config": {"targets": []}}, False),
        (
            "plugins",
            ON_ROUTE | {"config": {"targets": [SEED_ENTRY], "balancer": {"algorithm": "semantic"}}},
            False,
        ),
        ("plugins", {"name": "key-auth", "config": {"key_in_body": True}}, False),
        ("plugins", {"name": "rate-limiting"}, False),
        ("routes", {"name": "v", "paths": ["/v"]}, True),
        ("routes", {"name": "v"}, False),
        ("services", {"name": "v", "url": "http://v.example:8080"}, True),
        ("services", {"name": "v", "port": "eighty"}, False),
        ("consumers", {"username": "v"}, True),
        ("consumers", {"custom_id": None}, False),
        ("consumer_groups", {"name": "v"}, True),
    ],
)
@pytest.mark.usefixtures("validated_route")
def test_validate_answers_as_a_post_would_and_stores_nothing(
    admin: httpx.Client, entity: str, body: dict[str, Any], valid: bool
) -> None:
    before = everything(admin)
    response = admin.post(f"/schemas/{entity}/validate", json=body)
    if valid:
        assert (response.status_code, response.json()) == (
            200,
            {"message": "schema validation successful"},
        )
    else:
        assert response.status_code == 400, response.text
        assert response.json()["name"] == "schema violation"
    assert everything(admin) == before
    if not valid:
        # The same body POSTed for real is refused with the very same answer.
        posted = admin.post(f"/{entity}", json=body)
        assert (posted.status_code, posted.json()) == (400, response.json())
        assert everything(admin) == before


def test_validate_judges_a_body_on_its_own(admin: httpx.Client) -> None:
    """The file's global plugin exists: a POST of another global one is a 409, while
    validating it checks the body itself, as Kong's validate does."""
    body = {"name": "ai-proxy-advanced", "config": {"targets": [SEED_ENTRY]}}
    before = everything(admin)
    assert admin.post("/plugins", json=body).status_code == 409
    response = admin.post("/schemas/plugins/validate", json=body)
    assert response.status_code == 200, response.text
    body["config"]["balancer"] = {"retries": -1}
    response = admin.post("/schemas/plugins/validate", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["fields"] == {
        "config": {"balancer": {"retries": "value must be at least 0"}}
    }
    assert everything(admin) == before


def test_validate_takes_kongs_form_bodies_and_the_plugins_path(admin: httpx.Client) -> None:
    """``curl -X POST :8001/schemas/plugins/validate --data name=key-auth ...``."""
    before = config_version(admin)
    for fields, status in (
        ("name=key-auth&config.key_names=apikey", 200),
        ("name=key-auth&config.key_names=apikey&config.hide_credentials=perhaps", 400),
    ):
        response = admin.post(
            "/schemas/plugins/validate",
            content=fields.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == status, response.text
    assert config_version(admin) == before


def test_validate_of_an_unknown_entity_is_kongs_404(admin: httpx.Client) -> None:
    response = admin.post("/schemas/upstreams/validate", json={"name": "u"})
    assert (response.status_code, response.json()) == (
        404,
        {"message": "No entity named 'upstreams'"},
    )


# ---------------------------------------------------------------------------- tags


@pytest.fixture
def tagged(admin: httpx.Client) -> Iterator[list[tuple[str, str, list[str]]]]:
    """A service, a route and a consumer with tags: (kind, id, tags) of each."""
    service = created(
        admin.post(
            "/services",
            json={"name": "tagged", "url": "http://t.example", "tags": ["t1", "shared"]},
        )
    )
    route = created(
        admin.post(
            "/services/tagged/routes",
            json={"name": "tagged", "paths": ["/t"], "tags": ["shared", "t2", "t3"]},
        )
    )
    consumer = created(admin.post("/consumers", json={"username": "tagged", "tags": ["shared"]}))
    yield [
        ("services", service["id"], service["tags"]),
        ("routes", route["id"], route["tags"]),
        ("consumers", consumer["id"], consumer["tags"]),
    ]
    for path in ("/consumers/tagged", "/routes/tagged", "/services/tagged"):
        assert admin.delete(path).status_code == 204


def every_page(admin: httpx.Client, url: str) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        response = admin.get(next_url)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) <= {"data", "next", "offset"}
        rows += body["data"]
        next_url = body["next"]
        pages += 1
        assert pages < 50
    return rows, pages


def test_tags_lists_every_tag_of_every_entity(
    admin: httpx.Client, tagged: list[tuple[str, str, list[str]]]
) -> None:
    expected = [
        {"entity_name": kind, "entity_id": entity_id, "tag": tag}
        for kind, entity_id, tags in sorted(tagged, key=lambda t: t[1])
        for tag in tags
    ]
    rows, pages = every_page(admin, "/tags")
    assert (rows, pages) == (expected, 1)
    # Kong's paging, also where a page ends inside one entity's tags.
    paged, pages = every_page(admin, "/tags?size=2")
    assert (paged, pages) == (expected, 3)
    assert every_page(admin, "/tags?tags=t1")[0] == expected  # ?tags= is ignored, as by Kong
    shared, _ = every_page(admin, "/tags/shared")
    assert shared == [row for row in expected if row["tag"] == "shared"]
    assert len(shared) == 3
    assert every_page(admin, "/tags/shared?size=1")[0] == shared
    assert every_page(admin, "/tags/no-such-tag")[0] == []


# ----------------------------------------------------------- unknown paths, methods


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no-such-thing", 404),
        ("POST", "/no-such-thing/at/all", 404),
        ("GET", "/schemas", 404),
        ("GET", "/schemas/routes/extra", 404),
        ("GET", "/tags/a/b", 404),
        ("GET", "/services/x/no-such-child", 404),
        ("DELETE", "/", 405),
        ("POST", "/plugins/enabled", 405),
        ("GET", "/schemas/plugins/validate", 405),
        ("GET", "/schemas/routes/validate", 405),
        ("POST", "/schemas/routes", 405),
        ("POST", "/tags", 405),
        ("POST", "/status", 405),
        ("PUT", "/metrics", 405),
        ("DELETE", "/stats", 405),
    ],
)
def test_every_refusal_on_the_admin_port_is_kongs_shape(
    admin: httpx.Client, method: str, path: str, status: int
) -> None:
    response = admin.request(method, path)
    message = "Not found" if status == 404 else "Method not allowed"
    assert (response.status_code, response.json()) == (status, {"message": message})
    assert response.headers["content-type"].startswith("application/json")


def test_the_proxy_port_keeps_openais_error_shape(proxy: Proxy) -> None:
    response = httpx.get(f"{proxy.url}/no-such-thing", timeout=10)
    openai_error(response, 404, "not_found_error")


# ----------------------------------------------------- the default route goes away


def test_adding_a_route_removes_the_default_chat_route(
    admin: httpx.Client, proxy: Proxy, mock: Mock
) -> None:
    """Kong serves only its routes; the built-in route exists only while there are none."""
    mock.reset()
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as client:
        assert client.chat.completions.create(model="m", messages=messages()).model == "m"
    route = created(admin.post("/routes", json={"name": "only", "paths": ["/only"]}))
    try:
        assert route["paths"] == ["/only"]
        openai_error(chat(proxy, ""), 404, "not_found_error")
        assert chat(proxy, "/only").status_code == 200  # the global plugin serves it
    finally:
        assert admin.delete("/routes/only").status_code == 204
    assert chat(proxy, "").status_code == 200
    assert json.loads(proxy.status_text())["degraded"] is False
