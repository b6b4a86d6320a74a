"""The Admin API's CRUD on flat documents, Kong's error bodies, and the routes of
``AdminApi`` over an in-memory config manager (no HTTP, no processes)."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from tests.support import free_port
from tokenlb_proxy.admin import crud, kong_errors
from tokenlb_proxy.admin.api import AdminApi
from tokenlb_proxy.admin.kong_errors import AdminError
from tokenlb_proxy.admin.security import is_loopback, token_matches
from tokenlb_proxy.config.entities import validate
from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.control.manager import ConfigManager
from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.control.repository import LocalRepository, StoredConfig
from tokenlb_proxy.plan import Gateway
from tokenlb_proxy.settings import settings_from_env

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
NOW = 1_700_000_000


def plugin_config(model: str = "gpt-4") -> dict[str, Any]:
    return {
        "targets": [{"model": {"provider": "openai", "name": model}, "route_type": "llm/v1/chat"}]
    }


def seed_body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((SEED / "admin-global.json").read_text())
    return body


def base_doc() -> dict[str, Any]:
    """A document with a service, a route under it and a plugin on the route."""
    doc: dict[str, Any] = {"_format_version": "3.0"}
    service = crud.create(doc, "services", {"name": "svc", "url": "http://u:9000/v1"}, NOW)
    crud.create(
        doc, "routes", {"name": "chat", "paths": ["/chat"], "service": {"id": service["id"]}}, NOW
    )
    crud.create(
        doc,
        "plugins",
        {"name": "ai-proxy-advanced", "route": "chat", "config": plugin_config()},
        NOW,
    )
    return doc


def refused(call: Any, *args: Any, **kwargs: Any) -> AdminError:
    with pytest.raises(AdminError) as info:
        call(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------------- create


def test_create_fills_kongs_defaults_ids_and_timestamps() -> None:
    doc = base_doc()
    service, route, plugin = doc["services"][0], doc["routes"][0], doc["plugins"][0]
    assert uuid.UUID(service["id"])
    assert (service["protocol"], service["host"], service["port"], service["path"]) == (
        "http",
        "u",
        9000,
        "/v1",
    )
    assert route["service"] == {"id": service["id"]}
    assert plugin["route"] == {"id": route["id"]}
    assert plugin["enabled"] is True
    assert plugin["protocols"] == ["grpc", "grpcs", "http", "https"]
    assert plugin["config"]["balancer"]["algorithm"] == "round-robin"
    assert plugin["config"]["targets"][0]["weight"] == 100
    assert plugin["created_at"] == plugin["updated_at"] == NOW
    validate(doc)  # the document the CRUD functions build compiles


def test_duplicate_names_are_a_unique_violation() -> None:
    doc = base_doc()
    error = refused(crud.create, doc, "services", {"name": "svc"}, NOW)
    assert (error.status_code, error.body) == (
        409,
        {
            "code": 5,
            "name": "unique constraint violation",
            "message": "UNIQUE violation detected on '{name=\"svc\"}'",
            "fields": {"name": "svc"},
        },
    )


def test_a_second_plugin_of_a_name_at_one_scope_is_a_unique_violation() -> None:
    doc = base_doc()
    route_id = doc["routes"][0]["id"]
    body = {"name": "ai-proxy-advanced", "route": {"id": route_id}, "config": plugin_config()}
    error = refused(crud.create, doc, "plugins", body, NOW)
    assert error.status_code == 409
    assert error.body["message"] == (
        "UNIQUE violation detected on '{consumer=null,consumer_group=null,"
        f'name="ai-proxy-advanced",route={{id="{route_id}"}},service=null}}\''
    )


def test_a_post_with_the_id_of_an_existing_entity_is_a_primary_key_violation() -> None:
    doc = base_doc()
    service_id = doc["services"][0]["id"]
    error = refused(crud.create, doc, "services", {"name": "other", "id": service_id}, NOW)
    assert (error.status_code, error.body["code"], error.body["fields"]) == (
        400,
        3,
        {"id": service_id},
    )


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "r", "paths": ["/r"], "service": {"id": "nope"}}, {"service": {"id": "nope"}}),
        (
            {"name": "r", "paths": ["/r"], "service": {"name": "nope"}},
            {"service": {"name": "nope"}},
        ),
        ({"name": "r", "paths": ["/r"], "service": "nope"}, {"service": {"id": "nope"}}),
    ],
)
def test_a_reference_to_nothing_is_a_foreign_key_violation_and_stores_nothing(
    body: dict[str, Any], fields: dict[str, Any]
) -> None:
    doc = base_doc()
    before = copy.deepcopy(doc)
    error = refused(crud.create, doc, "routes", body, NOW)
    assert error.status_code == 400
    assert error.body["code"] == 4
    assert error.body["name"] == "foreign key violation"
    assert error.body["fields"] == fields
    assert error.body["message"].endswith("does not reference an existing 'services' entity.")
    assert doc == before


@pytest.mark.parametrize(
    ("kind", "body", "fields"),
    [
        ("services", {"name": "s", "colour": "red"}, {"colour": "unknown field"}),
        ("services", {"name": "s", "routes": []}, {"routes": "unknown field"}),
        ("services", {"name": "s", "port": "eighty"}, {"port": "expected an integer"}),
        ("routes", {"name": "r", "paths": "/r"}, {"paths": "expected an array"}),
        ("consumers", {"username": "a", "groups": ["g"]}, {"groups": "unknown field"}),
        (
            "consumers",
            {"tags": ["x"]},
            {
                "@entity": [
                    "at least one of these fields must be non-empty: 'custom_id', 'username'"
                ]
            },
        ),
        ("plugins", {"config": {}}, {"name": "required field missing"}),
        (
            "plugins",
            {"name": "ai-proxy-advanced", "enabled": "yes", "config": plugin_config()},
            {"enabled": "expected a boolean"},
        ),
        (
            "plugins",
            {"name": "ai-proxy-advanced", "protocols": ["ftp"], "config": plugin_config()},
            {"protocols": ["expected one of: grpc, grpcs, http, https, ws, wss"]},
        ),
        ("services", {"name": "s", "id": "not-a-uuid"}, {"id": "expected a valid UUID"}),
        ("services", ["not", "a", "record"], {"@entity": ["expected a record"]}),
    ],
)
def test_bad_bodies_are_kong_schema_violations(
    kind: str, body: Any, fields: dict[str, Any]
) -> None:
    doc = base_doc()
    before = copy.deepcopy(doc)
    error = refused(crud.create, doc, kind, body, NOW)
    assert error.status_code == 400
    assert error.body["code"] == 2
    assert error.body["name"] == "schema violation"
    assert error.body["fields"] == fields
    assert doc == before


def test_key_auth_credentials_get_a_key_and_never_echo_a_duplicate_one() -> None:
    doc = base_doc()
    consumer = crud.create(doc, "consumers", {"username": "alice"}, NOW)
    generated = crud.create(doc, "keyauth_credentials", {"consumer": "alice"}, NOW)
    assert len(generated["key"]) == 32
    assert generated["consumer"] == {"id": consumer["id"]}
    crud.create(doc, "keyauth_credentials", {"consumer": "alice", "key": "alice-secret-key"}, NOW)
    error = refused(
        crud.create,
        doc,
        "keyauth_credentials",
        {"consumer": "alice", "key": "alice-secret-key"},
        NOW,
    )
    assert error.status_code == 409
    assert "alice-secret-key" not in json.dumps(error.body)


# ------------------------------------------------------------------- patch and put


def test_patch_merges_config_records_and_replaces_arrays() -> None:
    doc = base_doc()
    plugin_id = doc["plugins"][0]["id"]
    patched = crud.patch(
        doc,
        "plugins",
        plugin_id,
        {
            "config": {
                "balancer": {"algorithm": "lowest-usage"},
                "targets": [
                    {"model": {"provider": "openai", "name": "b"}, "route_type": "llm/v1/chat"}
                ],
            }
        },
        NOW + 5,
    )
    assert patched["id"] == plugin_id
    assert patched["config"]["balancer"]["algorithm"] == "lowest-usage"
    assert patched["config"]["balancer"]["retries"] == 5  # kept
    assert [t["model"]["name"] for t in patched["config"]["targets"]] == ["b"]
    assert patched["config"]["targets"][0]["weight"] == 100  # defaults filled again
    assert (patched["created_at"], patched["updated_at"]) == (NOW, NOW + 5)
    assert doc["plugins"] == [patched]


def test_patch_of_nothing_is_not_found() -> None:
    error = refused(crud.patch, base_doc(), "services", "nope", {"retries": 1}, NOW)
    assert (error.status_code, error.body) == (404, {"message": "Not found"})


def test_put_creates_by_name_then_replaces_keeping_id_and_created_at() -> None:
    doc = base_doc()
    created, was_created = crud.put(
        doc, "services", "other", {"url": "http://a", "retries": 1}, NOW
    )
    assert was_created
    assert (created["name"], created["retries"]) == ("other", 1)
    replaced, was_created = crud.put(doc, "services", "other", {"url": "http://b"}, NOW + 1)
    assert not was_created
    assert replaced["id"] == created["id"]
    assert (replaced["created_at"], replaced["updated_at"]) == (NOW, NOW + 1)
    assert (replaced["host"], replaced["retries"]) == ("b", 5)  # a PUT replaces everything


def test_put_by_uuid_creates_with_that_id() -> None:
    doc = base_doc()
    entity_id = str(uuid.uuid4())
    created, was_created = crud.put(doc, "consumers", entity_id, {"username": "bob"}, NOW)
    assert was_created
    assert created["id"] == entity_id


# ------------------------------------------------------------------------ delete


def test_a_service_with_routes_cannot_be_deleted() -> None:
    doc = base_doc()
    error = refused(crud.delete, doc, "services", "svc")
    assert (error.status_code, error.body) == (
        400,
        {
            "code": 4,
            "name": "foreign key violation",
            "message": "an existing 'routes' entity references this 'services' entity",
            "fields": {"@referenced_by": "routes"},
        },
    )


def test_deleting_a_route_deletes_its_plugins() -> None:
    doc = base_doc()
    assert crud.delete(doc, "routes", "chat")
    assert doc["routes"] == []
    assert doc["plugins"] == []
    assert crud.delete(doc, "services", "svc")


def test_deleting_a_consumer_deletes_its_credentials_and_plugins_only() -> None:
    doc = base_doc()
    for name in ("alice", "bob"):
        crud.create(doc, "consumers", {"username": name}, NOW)
        crud.create(doc, "keyauth_credentials", {"consumer": name, "key": f"{name}-key"}, NOW)
        crud.create(
            doc,
            "plugins",
            {"name": "ai-proxy-advanced", "consumer": name, "config": plugin_config()},
            NOW,
        )
    assert crud.delete(doc, "consumers", "alice")
    assert [c["username"] for c in doc["consumers"]] == ["bob"]
    assert [c["key"] for c in doc["keyauth_credentials"]] == ["bob-key"]
    assert len(doc["plugins"]) == 2  # the route's and bob's


def test_deleting_a_group_deletes_its_memberships_and_plugins() -> None:
    doc = base_doc()
    group = crud.create(doc, "consumer_groups", {"name": "gold"}, NOW)
    alice = crud.create(doc, "consumers", {"username": "alice"}, NOW)
    crud.add_members(doc, group, [alice], NOW)
    crud.create(
        doc,
        "plugins",
        {"name": "ai-proxy-advanced", "consumer_group": "gold", "config": plugin_config()},
        NOW,
    )
    assert alice["groups"] == [{"id": group["id"]}]
    assert crud.delete(doc, "consumer_groups", "gold")
    assert alice["groups"] == []
    assert len(doc["plugins"]) == 1


def test_membership_removal_of_a_non_member_is_not_found() -> None:
    doc = base_doc()
    group = crud.create(doc, "consumer_groups", {"name": "gold"}, NOW)
    alice = crud.create(doc, "consumers", {"username": "alice"}, NOW)
    assert refused(crud.remove_member, doc, group, alice).status_code == 404
    crud.add_members(doc, group, [alice, alice], NOW)
    assert alice["groups"] == [{"id": group["id"]}]
    crud.remove_member(doc, group, alice)
    assert alice["groups"] == []


def test_deleting_nothing_is_false() -> None:
    assert not crud.delete(base_doc(), "plugins", str(uuid.uuid4()))


def test_entities_are_kept_in_id_order() -> None:
    doc = base_doc()
    for index in range(20):
        crud.create(doc, "consumers", {"username": f"c{index}"}, NOW)
    ids = [c["id"] for c in doc["consumers"]]
    assert ids == sorted(ids)


# ------------------------------------------------------------------ error shapes


def test_compile_errors_map_back_to_the_entitys_own_fields() -> None:
    exc = ConfigError(
        [
            FieldError("plugins[1].config.balancer.algorithm", "Invalid enum value 'x'"),
            FieldError("plugins[1].config", "Object missing required field `targets`"),
            FieldError("plugins[10].config", "another plugin's problem"),
            FieldError("plugins", "nothing to serve"),
        ]
    )
    error = crud.compile_error(exc, "plugins", 1)
    assert error.status_code == 400
    fields = error.body["fields"]
    assert fields["config"]["targets"] == "required field missing"
    assert fields["config"]["balancer"]["algorithm"].startswith("expected one of: round-robin,")
    assert fields["@entity"] == [
        "plugins[10].config: another plugin's problem",
        "plugins: nothing to serve",
    ]
    assert error.body["message"].startswith("4 schema violations (plugins[10].config: another")


def test_schema_violation_fields_mirror_the_path_and_the_message_lists_them() -> None:
    error = kong_errors.schema_violation([FieldError("config.targets", "required field missing")])
    assert error.body == {
        "code": 2,
        "name": "schema violation",
        "message": "schema violation (config.targets: required field missing)",
        "fields": {"config": {"targets": "required field missing"}},
    }
    nested = kong_errors.schema_violation(
        [
            FieldError("config.targets[1].weight", "value must be at least 1"),
            FieldError("config.targets[1]", "header_name and header_value must be set together"),
        ]
    )
    assert nested.body["fields"] == {
        "config": {
            "targets": [
                None,
                {
                    "@entity": ["header_name and header_value must be set together"],
                    "weight": "value must be at least 1",
                },
            ]
        }
    }


def test_lua_pretty_prints_keys_as_kong_does() -> None:
    assert kong_errors.lua_pretty({"name": "x", "service": None, "route": {"id": "1"}}) == (
        '{name="x",route={id="1"},service=null}'
    )


# --------------------------------------------------------------------- security


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("admin.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_token_comparison() -> None:
    assert token_matches("s3cret-token", "s3cret-token")
    assert not token_matches("s3cret-token", "s3cret-tokem")
    assert not token_matches("s3cret-token", None)
    assert not token_matches("s3cret-token", "")


def test_the_admin_token_comes_from_the_environment_and_never_shows() -> None:
    settings = settings_from_env({"TOKENLB_ADMIN_TOKEN": "tok-5ecret-value"}, config_path="x")
    assert settings.admin_token == "tok-5ecret-value"
    assert "tok-5ecret-value" not in repr(settings)
    assert "admin_token='<redacted>'" in repr(settings)
    assert settings_from_env({"TOKENLB_ADMIN_TOKEN": ""}, config_path="x").admin_token is None


# --------------------------------------------------------- AdminApi, in memory


class Api:
    """``AdminApi`` over a ConfigManager on an in-memory repository."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.repository = LocalRepository()
        self.applied: list[Gateway] = []

        async def apply(gateway: Gateway, _: StoredConfig) -> None:
            self.applied.append(gateway)

        self.manager = ConfigManager(self.repository, validate, apply)
        asyncio.run(self.repository.save(document, 0))
        self.api = AdminApi(lambda: self.manager)

    def __call__(self, method: str, path: str, body: Any = None, **query: str) -> tuple[int, Any]:
        raw = (
            body
            if isinstance(body, bytes)
            else json.dumps(body).encode()
            if body is not None
            else b""
        )
        return asyncio.run(self.api.handle(method, path, query, raw))

    def version(self) -> int:
        return asyncio.run(self.repository.version())


def test_api_pages_in_id_order_with_kongs_links() -> None:
    api = Api(base_doc())
    for index in range(105):
        status, _ = api("POST", "/consumers", {"username": f"user-{index:03d}"})
        assert status == 201
    status, first = api("GET", "/consumers/")
    assert status == 200
    assert len(first["data"]) == 100
    assert first["next"] == f"/consumers?offset={first['offset']}"
    _, second = api("GET", "/consumers", offset=first["offset"])
    assert len(second["data"]) == 5
    assert second["next"] is None
    assert "offset" not in second
    ids = [c["id"] for c in first["data"] + second["data"]]
    assert ids == sorted(ids)
    assert len(set(ids)) == 105
    _, small = api("GET", "/consumers", size="50")
    assert small["next"].endswith("&size=50")


def test_api_filters_lists_by_tags_as_kong_does() -> None:
    api = Api(base_doc())
    for name, tags in (("ab", ["a", "b"]), ("a", ["a"]), ("b", ["b"]), ("none", None)):
        assert api("POST", "/consumers", {"username": f"tagged-{name}", "tags": tags})[0] == 201

    def names(tags: str) -> set[str]:
        status, page = api("GET", "/consumers", tags=tags)
        assert status == 200, page
        return {c["username"] for c in page["data"]} - {"alice"}

    assert names("a,b") == {"tagged-ab"}
    assert names("a/b") == {"tagged-ab", "tagged-a", "tagged-b"}
    assert names("a") == {"tagged-ab", "tagged-a"}
    assert names("zzz") == set()
    _, page = api("GET", "/consumers", tags="a/b", size="1")
    assert page["next"].endswith("&size=1&tags=a/b")
    status, refused = api("GET", "/consumers", tags="a,b/c")
    assert (status, refused["code"], refused["name"]) == (400, 11, "invalid options")
    assert refused["message"] == "invalid option (tags: cannot mix 'or' and 'and')"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"size": "many"}, "size must be a number"),
        ({"size": "0"}, "size must be an integer between 1 and 1000"),
        ({"size": "1001"}, "size must be an integer between 1 and 1000"),
        ({"offset": "%%%"}, "'%%%' is not a valid offset: bad base64 encoding"),
    ],
)
def test_api_refuses_bad_paging(query: dict[str, str], message: str) -> None:
    status, body = Api(base_doc())("GET", "/services", **query)
    assert status == 400
    assert body["message"] == message


def test_api_refusals_store_nothing() -> None:
    api = Api(base_doc())
    version = api.version()
    assert api("POST", "/plugins", b"{not json") == (400, {"message": "Cannot parse JSON body"})
    status, body = api("POST", "/plugins", {"name": "ai-proxy-advanced", "config": {}})
    assert (status, body["fields"]) == (400, {"config": {"targets": "required field missing"}})
    assert api("POST", "/services/nope/plugins", seed_body())[0] == 404
    assert api("POST", "/routes", {"name": "x", "paths": ["/x"], "service": "nope"})[0] == 400
    assert api("GET", "/nothing-here")[0] == 404
    assert api.version() == version
    assert api.applied == []


def test_api_scopes_plugins_by_the_url_and_lists_per_scope() -> None:
    api = Api(base_doc())
    status, plugin = api("POST", "/services/svc/plugins/", seed_body())
    assert status == 201
    service_id = api("GET", "/services/svc")[1]["id"]
    assert plugin["service"] == {"id": service_id}
    listed = api("GET", f"/services/{service_id}/plugins")[1]["data"]
    assert [p["id"] for p in listed] == [plugin["id"]]
    assert api("GET", f"/services/svc/plugins/{plugin['id']}")[1]["id"] == plugin["id"]
    route_plugin = api("GET", "/routes/chat/plugins")[1]["data"][0]
    assert api("GET", f"/services/svc/plugins/{route_plugin['id']}")[0] == 404
    assert len(api("GET", "/plugins")[1]["data"]) == 2


def test_api_patch_of_a_plugin_serves_the_new_config() -> None:
    api = Api(base_doc())
    plugin_id = api("GET", "/plugins")[1]["data"][0]["id"]
    status, patched = api(
        "PATCH",
        f"/plugins/{plugin_id}",
        {"config": {"targets": plugin_config("gpt-4o")["targets"]}},
    )
    assert status == 200
    assert patched["config"]["targets"][0]["model"]["name"] == "gpt-4o"
    assert [t.model_name for t in api.applied[-1].balancers[0].targets] == ["gpt-4o"]


def test_api_memberships_both_ways() -> None:
    api = Api(base_doc())
    api("POST", "/consumer_groups", {"name": "gold"})
    api("POST", "/consumers", {"username": "alice"})
    api("POST", "/consumers", {"username": "bob"})
    status, added = api("POST", "/consumer_groups/gold/consumers", {"consumer": ["alice"]})
    assert status == 201
    assert added["consumer_group"]["name"] == "gold"
    assert [c["username"] for c in added["consumers"]] == ["alice"]
    assert api("POST", "/consumers/bob/consumer_groups", {"group": "gold"})[0] == 201
    members = api("GET", "/consumer_groups/gold/consumers")[1]["data"]
    assert sorted(c["username"] for c in members) == ["alice", "bob"]
    view = api("GET", "/consumer_groups/gold")[1]
    assert view["consumer_group"]["name"] == "gold"
    assert len(view["consumers"]) == 2
    assert "groups" not in view["consumers"][0]
    assert api("DELETE", "/consumer_groups/gold/consumers/alice") == (204, None)
    assert [g["name"] for g in api("GET", "/consumers/bob/consumer_groups")[1]["data"]] == ["gold"]
    assert api("GET", "/consumers/alice/consumer_groups")[1]["data"] == []
    assert api("POST", "/consumer_groups/gold/consumers", {"consumer": "nobody"})[0] == 404
    assert api("POST", "/consumer_groups/gold/consumers", {})[1] == {
        "message": "must provide consumer"
    }


def test_api_delete_of_nothing_is_204_and_stores_nothing() -> None:
    api = Api(base_doc())
    version = api.version()
    assert api("DELETE", f"/plugins/{uuid.uuid4()}") == (204, None)
    assert api("DELETE", f"/consumers/nobody/key-auth/{uuid.uuid4()}")[0] == 404
    assert api.version() == version


async def test_api_answers_503_while_redis_is_unreachable() -> None:
    """Nobody listens on the port: reads and writes say so instead of a bare 500."""
    client = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=0.5)
    repository = RedisRepository(client, owns_client=True)

    async def apply(gateway: Gateway, _: StoredConfig) -> None:
        raise AssertionError("nothing may be applied")

    api = AdminApi(lambda: ConfigManager(repository, validate, apply))
    try:
        for method, body in (("GET", b""), ("POST", b'{"username": "alice"}')):
            status, answer = await api.handle(method, "/consumers", {}, body)
            assert status == 503
            assert "unreachable" in answer["message"]
    finally:
        await repository.close()


def test_a_credentials_ttl_is_shown_as_what_is_left_of_it() -> None:
    entity = {"id": "c", "key": "k", "ttl": 60, "created_at": 1_000}
    assert crud.present("keyauth_credentials", entity, now=1_000)["ttl"] == 60
    assert crud.present("keyauth_credentials", entity, now=1_045.5)["ttl"] == 15
    assert entity["ttl"] == 60  # the stored value is not changed
    assert not crud.expired("keyauth_credentials", entity, now=1_059.9)
    assert crud.expired("keyauth_credentials", entity, now=1_060)
    assert not crud.expired("keyauth_credentials", {**entity, "ttl": 0}, now=10**9)
    api = Api(base_doc())
    assert api("POST", "/consumers", {"username": "temp"})[0] == 201
    status, created = api("POST", "/consumers/temp/key-auth", {"key": "temp-key-0123", "ttl": 30})
    assert status == 201, created
    assert 29 <= created["ttl"] <= 30
    status, refused = api("POST", "/consumers/temp/key-auth", {"key": "other-key-01", "ttl": -5})
    assert status == 400, refused
    assert refused["fields"] == {"ttl": "value must be at least 0"}
