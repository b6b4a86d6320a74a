"""Config: consumers, consumer groups, key-auth credentials and plugins, secret references.

Every test compiles a real document through the same parser a file goes through.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenlb_proxy.config import ConfigError, FieldError, compile_gateway, parse_document
from tokenlb_proxy.config.plugins import plugin_config_with_defaults
from tokenlb_proxy.plan import Gateway, RouteRule
from tokenlb_proxy.routing import match_route

SECRET = "sk-live-0123456789abcdef"
CONSUMER_KEY = "alice-key-5f1c0ffee"


def target(model: str = "gpt-4o", **auth: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model": {"name": model, "provider": "openai"},
        "route_type": "llm/v1/chat",
    }
    if auth:
        entry["auth"] = auth
    return entry


def ai_proxy(model: str = "gpt-4o", **refs: Any) -> dict[str, Any]:
    return {"name": "ai-proxy-advanced", **refs, "config": {"targets": [target(model)]}}


def key_auth(**refs: Any) -> dict[str, Any]:
    return {"name": "key-auth", **refs}


def document(**parts: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "https://api.openai.com"}],
        "routes": [
            {"name": "r", "paths": ["/r"], "service": "s"},
            {"name": "lone", "paths": ["/lone"]},
        ],
        "consumers": [
            {"username": "alice", "keyauth_credentials": [{"key": CONSUMER_KEY}]},
            {"username": "bob"},
        ],
        "consumer_groups": [{"name": "gold"}],
        "plugins": [ai_proxy()],
    }
    doc.update(parts)
    return doc


def compile_doc(doc: dict[str, Any], environ: dict[str, str] | None = None) -> Gateway:
    return compile_gateway(parse_document(json.dumps(doc), {}), environ or {})


def errors_of(doc: dict[str, Any], environ: dict[str, str] | None = None) -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        compile_doc(doc, environ)
    return info.value.errors


def rule_for(gateway: Gateway, path: str) -> RouteRule:
    rule = match_route(gateway, "POST", path, "localhost", {})
    assert rule is not None
    return rule


# ----------------------------------------------------------------------------- key-auth


def test_key_auth_applies_with_kongs_precedence_and_defaults() -> None:
    doc = document(
        plugins=[
            ai_proxy(),
            key_auth(config={"key_names": ["x-global"]}),
            key_auth(route="r", config={"key_names": ["x-route"]}),
            key_auth(service="s", config={"key_names": ["X-Service"]}),
        ]
    )
    gateway = compile_doc(doc)
    route_plan = rule_for(gateway, "/r").key_auth
    assert route_plan is not None
    assert route_plan.key_names == ("x-route",)
    lone = rule_for(gateway, "/lone").key_auth
    assert lone is not None
    assert lone.key_names == ("x-global",)
    # Kong's defaults.
    assert lone.in_header
    assert lone.in_query
    assert lone.run_on_preflight
    assert not lone.hide_credentials
    assert lone.anonymous is None
    assert lone.challenge == "Key"
    # Remove the route's own: the service's applies (header names compare lower-cased).
    doc["plugins"].pop(2)
    service_plan = rule_for(compile_doc(doc), "/r").key_auth
    assert service_plan is not None
    assert service_plan.key_names == ("X-Service",)
    assert service_plan.header_names == ("x-service",)


def test_routes_without_key_auth_have_none() -> None:
    assert all(rule.key_auth is None for rule in compile_doc(document()).routes)


@pytest.mark.parametrize(
    ("refs", "field"),
    [({"consumer": "alice"}, "consumer"), ({"consumer_group": "gold"}, "consumer_group")],
)
def test_key_auth_cannot_be_scoped_to_a_consumer_or_group(refs: dict[str, str], field: str) -> None:
    doc = document(plugins=[ai_proxy(), key_auth(**refs)])
    [error] = errors_of(doc)
    assert error.path == f"plugins[1].{field}"
    assert error.message == "value must be null for key-auth"


def test_key_auth_nested_in_a_consumer_is_rejected() -> None:
    doc = document()
    doc["consumers"][1]["plugins"] = [key_auth()]
    assert [e.path for e in errors_of(doc)] == ["consumers[1].plugins[0].consumer"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("key_in_body", True),
        ("identity_realms", [{"scope": "realm", "id": "r-1", "region": "us"}]),
    ],
)
def test_key_auth_settings_tokenlb_cannot_honour_are_rejected(setting: str, value: Any) -> None:
    [error] = errors_of(document(plugins=[ai_proxy(), key_auth(config={setting: value})]))
    assert error.path == f"plugins[1].config.{setting}"
    assert "not supported yet" in error.message


def test_key_auth_schema_violations_name_the_field() -> None:
    doc = document(plugins=[ai_proxy(), key_auth(config={"key_names": ["bad header"], "typo": 1})])
    assert {e.path for e in errors_of(doc)} == {
        "plugins[1].config.key_names[0]",
        "plugins[1].config.typo",
    }


def test_key_auth_anonymous_names_a_consumer_by_username_or_id() -> None:
    doc = document(plugins=[ai_proxy(), key_auth(config={"anonymous": "bob", "realm": "ai"})])
    plan = rule_for(compile_doc(doc), "/r").key_auth
    assert plan is not None
    assert plan.anonymous is not None
    assert plan.anonymous.username == "bob"
    assert plan.challenge == 'Key realm="ai"'
    doc["consumers"][1]["id"] = "6d1c0b5e-0000-4000-8000-00000000b0b0"
    doc["plugins"][1]["config"]["anonymous"] = "6d1c0b5e-0000-4000-8000-00000000b0b0"
    plan = rule_for(compile_doc(doc), "/r").key_auth
    assert plan is not None
    assert plan.anonymous is not None
    assert plan.anonymous.username == "bob"
    doc["plugins"][1]["config"]["anonymous"] = "ghost"
    [error] = errors_of(doc)
    assert (error.path, error.message) == ("plugins[1].config.anonymous", "no consumer 'ghost'")


def test_other_plugins_stay_not_supported() -> None:
    [error] = errors_of(document(plugins=[ai_proxy(), {"name": "acl", "config": {}}]))
    assert error.path == "plugins[1].name"
    assert "not supported yet" in error.message


# ------------------------------------------------------------------------ the entities


def test_credentials_in_every_form_identify_their_consumer() -> None:
    doc = document(
        consumers=[
            {"username": "alice", "id": "a-1", "keyauth_credentials": [{"key": "k-nested"}]},
            {"username": "bob", "custom_id": "crm-7", "groups": ["gold"]},
        ],
        keyauth_credentials=[
            {"key": "k-by-name", "consumer": "bob", "id": "cred-1"},
            {"key": "k-by-id", "consumer": {"id": "a-1"}},
        ],
        plugins=[ai_proxy(), key_auth()],
    )
    plan = rule_for(compile_doc(doc), "/r").key_auth
    assert plan is not None
    owners = {cred.key: cred.consumer.username for cred in plan.credentials.values()}
    assert owners == {b"k-nested": "alice", b"k-by-name": "bob", b"k-by-id": "alice"}
    [bob] = [c for c in plan.credentials.values() if c.key == b"k-by-name"]
    assert bob.upstream_headers == (
        ("x-consumer-custom-id", "crm-7"),
        ("x-consumer-username", "bob"),
        ("x-consumer-groups", "gold"),
        ("x-credential-identifier", "cred-1"),
    )


def test_credentials_are_found_by_digest_and_never_shown() -> None:
    plan = rule_for(compile_doc(document(plugins=[ai_proxy(), key_auth()])), "/r").key_auth
    assert plan is not None
    [credential] = plan.credentials.values()
    assert all(len(digest) == 32 for digest in plan.credentials)
    assert CONSUMER_KEY not in repr(credential)
    assert CONSUMER_KEY not in repr(plan)


def test_the_flat_form_refers_by_id_and_scopes_by_username() -> None:
    doc = {
        "_format_version": "3.0",
        "services": [{"id": "s-1", "name": "s", "url": "https://api.openai.com"}],
        "routes": [{"id": "r-1", "name": "r", "paths": ["/r"], "service": {"id": "s-1"}}],
        "consumer_groups": [{"id": "g-1", "name": "gold"}],
        "consumers": [
            {"id": "c-1", "username": "alice", "groups": [{"id": "g-1"}]},
            {"id": "c-2", "username": "bob"},
        ],
        "keyauth_credentials": [{"id": "k-1", "key": CONSUMER_KEY, "consumer": {"id": "c-1"}}],
        "plugins": [
            {**ai_proxy("alice-model"), "consumer": {"id": "c-2"}, "route": {"id": "r-1"}},
            {**ai_proxy("gold-model"), "consumer_group": {"id": "g-1"}},
            {**key_auth(), "service": {"id": "s-1"}},
        ],
    }
    gateway = compile_doc(doc)
    rule = rule_for(gateway, "/r")
    assert {p.balancer_id for p in gateway.balancers} == {
        "consumer:bob+route:r",
        "consumer_group:gold",
    }
    assert rule.plan is None
    assert {k: p.targets[0].model_name for k, p in rule.consumer_plans.items()} == {
        "alice": "gold-model",
        "bob": "alice-model",
    }
    assert rule.key_auth is not None
    [credential] = rule.key_auth.credentials.values()
    assert credential.consumer.id == "c-1"
    assert credential.upstream_headers[0] == ("x-consumer-id", "c-1")


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (
            {"plugins": [ai_proxy(consumer="ghost")]},
            "plugins[0].consumer",
            "no consumer 'ghost'",
        ),
        (
            {"plugins": [ai_proxy(consumer_group={"name": "ghost"})]},
            "plugins[0].consumer_group",
            "no consumer group 'ghost'",
        ),
        (
            {"keyauth_credentials": [{"key": "k", "consumer": "ghost"}]},
            "keyauth_credentials[0].consumer",
            "no consumer 'ghost'",
        ),
        (
            {"keyauth_credentials": [{"key": "k"}]},
            "keyauth_credentials[0].consumer",
            "required field missing",
        ),
        (
            {"consumer_groups": [{"name": "gold", "consumers": ["ghost"]}]},
            "consumer_groups[0].consumers[0]",
            "no consumer 'ghost'",
        ),
        (
            {"consumers": [{"username": "alice", "groups": ["ghost"]}]},
            "consumers[0].groups[0]",
            "no consumer group 'ghost'",
        ),
        (
            {"plugins": [ai_proxy(route="ghost")]},
            "plugins[0].route",
            "no route 'ghost'",
        ),
    ],
)
def test_dangling_references_are_errors(change: dict[str, Any], path: str, message: str) -> None:
    [error] = errors_of(document(**change))
    assert (error.path, error.message) == (path, message)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"consumers": [{"username": "alice"}, {"username": "alice"}]}, "consumers[1]"),
        (
            {"consumers": [{"username": "a", "id": "x"}, {"username": "b", "id": "x"}]},
            "consumers[1]",
        ),
        (
            {
                "consumers": [
                    {"username": "a", "custom_id": "c"},
                    {"username": "b", "custom_id": "c"},
                ]
            },
            "consumers[1].custom_id",
        ),
        ({"consumer_groups": [{"name": "gold"}, {"name": "gold"}]}, "consumer_groups[1]"),
        ({"consumers": [{"custom_id": None, "tags": ["x"]}]}, "consumers[0]"),
    ],
)
def test_duplicate_or_anonymous_entities_are_errors(change: dict[str, Any], path: str) -> None:
    assert [e.path for e in errors_of(document(**change))] == [path]


def test_duplicate_keys_name_the_other_credential_not_the_key() -> None:
    doc = document(
        keyauth_credentials=[{"key": CONSUMER_KEY, "consumer": "bob"}],
        plugins=[ai_proxy(), key_auth()],
    )
    [error] = errors_of(doc)
    assert error.path == "keyauth_credentials[0].key"
    assert error.message == "the same key as consumers[0].keyauth_credentials[0]"


@pytest.mark.parametrize(
    ("credential", "path"),
    [
        ({"key": ""}, "consumers[0].keyauth_credentials[0].key"),
        ({"key": "k", "ttl": -1}, "consumers[0].keyauth_credentials[0].ttl"),
    ],
)
def test_empty_keys_and_negative_ttls_are_rejected(credential: dict[str, Any], path: str) -> None:
    doc = document(consumers=[{"username": "alice", "keyauth_credentials": [credential]}])
    assert [e.path for e in errors_of(doc)] == [path]


def test_a_plugin_cannot_be_scoped_to_a_consumer_and_a_group() -> None:
    [error] = errors_of(document(plugins=[ai_proxy(consumer="alice", consumer_group="gold")]))
    assert error.path == "plugins[0]"


def test_instance_names_are_unique() -> None:
    doc = document(plugins=[ai_proxy(instance_name="lb"), ai_proxy(instance_name="lb", route="r")])
    [error] = errors_of(doc)
    assert error.path == "plugins[1].instance_name"


# ------------------------------------------------------------------- secret references


def vault_doc(header_value: str) -> dict[str, Any]:
    config = {"targets": [target(header_name="Authorization", header_value=header_value)]}
    return document(plugins=[{"name": "ai-proxy-advanced", "config": config}])


def test_env_vault_references_resolve_kongs_way() -> None:
    gateway = compile_doc(vault_doc("Bearer {vault://env/openai-key}"), {"OPENAI_KEY": SECRET})
    [plan] = gateway.balancers
    assert plan.targets[0].auth_headers == (("authorization", f"Bearer {SECRET}"),)


def test_env_vault_reference_can_take_a_field_of_a_json_variable() -> None:
    environ = {"CREDS": json.dumps({"openai": SECRET})}
    [plan] = compile_doc(vault_doc("{vault://env/creds/openai}"), environ).balancers
    assert plan.targets[0].auth_headers == (("authorization", SECRET),)


def test_credential_keys_may_be_references() -> None:
    doc = document(
        consumers=[
            {"username": "alice", "keyauth_credentials": [{"key": "{vault://env/alice-key}"}]}
        ],
        plugins=[ai_proxy(), key_auth()],
    )
    plan = rule_for(compile_doc(doc, {"ALICE_KEY": CONSUMER_KEY}), "/r").key_auth
    assert plan is not None
    assert [c.key for c in plan.credentials.values()] == [CONSUMER_KEY.encode()]


def test_missing_variable_names_the_field_and_the_variable() -> None:
    [error] = errors_of(vault_doc("Bearer {vault://env/openai-key}"))
    assert error.path == "plugins[0].config.targets[0].auth.header_value"
    assert "OPENAI_KEY is not set" in error.message


@pytest.mark.parametrize(
    ("reference", "environ", "expected"),
    [
        ("{vault://aws/openai}", {}, "vault 'aws' is not supported yet"),
        ("{vault://env/creds/openai}", {"CREDS": SECRET}, "does not hold a JSON object"),
        ("{vault://env/openai-key?ttl=60}", {"OPENAI_KEY": SECRET}, "not supported yet"),
    ],
)
def test_unusable_references_are_errors_that_never_show_the_value(
    reference: str, environ: dict[str, str], expected: str
) -> None:
    [error] = errors_of(vault_doc(reference), environ)
    assert expected in error.message
    assert SECRET not in str(error)


def test_a_resolved_value_is_redacted_from_schema_errors() -> None:
    doc = vault_doc("x")
    doc["plugins"][0]["config"]["balancer"] = {"algorithm": "{vault://env/openai-key}"}
    [error] = errors_of(doc, {"OPENAI_KEY": SECRET})
    assert error.path == "plugins[0].config.balancer.algorithm"
    assert SECRET not in str(error)
    assert "<redacted>" in error.message


def test_the_document_keeps_the_reference() -> None:
    doc = vault_doc("Bearer {vault://env/openai-key}")
    decoded = parse_document(json.dumps(doc), {})
    compile_gateway(decoded, {"OPENAI_KEY": SECRET})
    assert SECRET not in json.dumps(doc)
    assert decoded.plugins[0].config["targets"][0]["auth"]["header_value"] == (
        "Bearer {vault://env/openai-key}"
    )


# --------------------------------------------------------------- defaults for the admin


def test_plugin_config_with_defaults_fills_kongs_defaults() -> None:
    filled = plugin_config_with_defaults("key-auth", {"key_names": ["apikey", "x-api-key"]})
    assert filled == {
        "key_names": ["apikey", "x-api-key"],
        "hide_credentials": False,
        "anonymous": None,
        "key_in_header": True,
        "key_in_query": True,
        "key_in_body": False,
        "run_on_preflight": True,
        "realm": None,
        "identity_realms": [{"scope": "cp", "region": None, "id": None}],
    }
    ai = plugin_config_with_defaults(
        "ai-proxy-advanced", {"targets": [target(header_name="A", header_value="{vault://env/k}")]}
    )
    assert ai["balancer"]["algorithm"] == "round-robin"
    assert ai["balancer"]["retries"] == 5
    assert ai["targets"][0]["weight"] == 100
    # References stay references.
    assert ai["targets"][0]["auth"]["header_value"] == "{vault://env/k}"


def test_plugin_config_with_defaults_reports_schema_errors_under_config() -> None:
    with pytest.raises(ConfigError) as info:
        plugin_config_with_defaults("key-auth", {"key_names": "apikey", "nope": 1})
    assert {e.path for e in info.value.errors} == {"config.key_names", "config.nope"}
    with pytest.raises(ConfigError) as info:
        plugin_config_with_defaults("rate-limiting", {})
    assert [e.path for e in info.value.errors] == ["name"]
