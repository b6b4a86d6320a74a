"""The Admin API's generated schemas against what a write really fills in, and what
``GET /`` may show of the settings.

Every field of every schema is walked: a default in a schema is exactly the value a
POST without that field stores, an enum is listed in the order errors list it, and no
entity or plugin tokenlb has lacks a schema (a type the generator cannot describe in
Kong's words fails here, at build time, rather than being left out).
"""

from __future__ import annotations

import typing
from typing import Any

import pytest

from tokenlb_proxy.admin import crud
from tokenlb_proxy.admin.node import NodeInfo, node_info, public_configuration
from tokenlb_proxy.admin.schemas import entity_schema, plugin_schema
from tokenlb_proxy.config.entities import KINDS
from tokenlb_proxy.config.plugin import Algorithm
from tokenlb_proxy.config.plugins import PLUGIN_SCHEMAS, plugin_config_with_defaults
from tokenlb_proxy.settings import settings_from_env

NOW = 1_700_000_000
MINIMAL_CONFIGS: dict[str, dict[str, Any]] = {
    "ai-proxy-advanced": {
        "targets": [{"route_type": "llm/v1/chat", "model": {"provider": "openai", "name": "m"}}]
    },
    "key-auth": {},
}


def descriptors(fields: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: descriptor for entry in fields for name, descriptor in entry.items()}


def assert_filled_as_described(
    fields: list[dict[str, Any]], given: dict[str, Any], filled: dict[str, Any], path: str = ""
) -> None:
    """Every field ``given`` left out is filled with the schema's default (or null when
    it has none); records and arrays of records are followed into."""
    described = descriptors(fields)
    assert set(filled) == set(described), path
    for name, descriptor in described.items():
        where = f"{path}.{name}"
        kind = descriptor["type"]
        if name in given:
            if kind == "record":
                assert_filled_as_described(descriptor["fields"], given[name], filled[name], where)
            elif kind == "array" and descriptor["elements"]["type"] == "record":
                for index, item in enumerate(given[name]):
                    element = descriptor["elements"]["fields"]
                    assert_filled_as_described(element, item, filled[name][index], where)
        elif "default" in descriptor:
            assert filled[name] == descriptor["default"], where
        elif kind == "record" and descriptor["required"]:
            assert_filled_as_described(descriptor["fields"], {}, filled[name], where)
        else:
            assert descriptor["required"] is False, where
            assert filled[name] is None, where


@pytest.mark.parametrize("name", sorted(PLUGIN_SCHEMAS))
def test_a_plugin_schemas_defaults_are_what_a_post_fills_in(name: str) -> None:
    schema = plugin_schema(name)
    assert schema is not None
    config = descriptors(schema["fields"])["config"]
    given = MINIMAL_CONFIGS[name]
    assert_filled_as_described(config["fields"], given, plugin_config_with_defaults(name, given))


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("services", {"name": "s"}),
        ("routes", {"name": "r", "paths": ["/r"]}),
        ("consumers", {"username": "c"}),
        ("consumer_groups", {"name": "g"}),
    ],
)
def test_an_entity_schemas_defaults_are_what_a_post_fills_in(
    kind: str, body: dict[str, Any]
) -> None:
    schema = entity_schema(kind)
    assert schema is not None
    entity = crud.create({"_format_version": "3.0"}, kind, body, NOW)
    for name, descriptor in descriptors(schema["fields"]).items():
        if "default" in descriptor:
            assert entity[name] == descriptor["default"], name


def test_every_entity_and_plugin_has_a_schema_and_nothing_else_does() -> None:
    for kind in KINDS:
        schema = entity_schema(kind)
        assert schema is not None
        assert schema["entity_checks"] == []
        assert not set(descriptors(schema["fields"])) & crud.refused_fields(kind)
    for name in PLUGIN_SCHEMAS:
        assert plugin_schema(name) is not None
    assert entity_schema("upstreams") is None
    assert plugin_schema("rate-limiting") is None


def test_an_enum_is_listed_in_declaration_order() -> None:
    schema = plugin_schema("ai-proxy-advanced")
    assert schema is not None
    config = descriptors(schema["fields"])["config"]
    balancer = descriptors(descriptors(config["fields"])["balancer"]["fields"])
    assert balancer["algorithm"]["one_of"] == list(typing.get_args(Algorithm))


def test_get_root_shows_no_secret_setting() -> None:
    password, token = "redis-pass-0a1b2c3d4e", "tok-admin-9f8e7d6c5b"
    settings = settings_from_env(
        {
            "TOKENLB_REDIS_URL": f"redis://:{password}@redis.internal:6379/0?password={password}",
            "TOKENLB_ADMIN_TOKEN": token,
        },
        config_path="/etc/tokenlb/kong.yaml",
    )
    configuration = public_configuration(settings)
    assert (configuration["database"], configuration["rbac"]) == ("redis", "on")
    info = node_info(NodeInfo(configuration=configuration), {"plugins": []})
    assert password not in repr(info)
    assert token not in repr(info)
    assert "redis.internal" not in repr(info)
    local = public_configuration(settings_from_env({}))
    assert (local["database"], local["rbac"]) == ("memory", "off")
