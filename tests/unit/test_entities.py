"""The flat config document: normalize (any decK form -> flat), nest (flat -> kong.yaml)
and validate (flat -> Gateway)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenlb_proxy.config import ConfigError, parse_document
from tokenlb_proxy.config.entities import nest, normalize, validate

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
KEY = "sk-test-5f1c0ffee"
ENV = {"DECK_OPENAI_API_KEY": KEY}
NOW = 1_700_000_000


def flat_of(doc: dict[str, Any] | str, now: int = NOW) -> dict[str, Any]:
    text = doc if isinstance(doc, str) else json.dumps({"_format_version": "3.0"} | doc)
    return normalize(parse_document(text, ENV), now=now)


def seed_flat(name: str, now: int = NOW) -> dict[str, Any]:
    return flat_of((SEED / name).read_text(), now)


def plugin_config(model: str = "gpt-4") -> dict[str, Any]:
    return {
        "targets": [{"model": {"provider": "openai", "name": model}, "route_type": "llm/v1/chat"}]
    }


def by_name(entities: list[dict[str, Any]], name: str, field: str = "name") -> dict[str, Any]:
    return next(e for e in entities if e.get(field) == name)


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and str(uuid.UUID(value)) == value


def test_service_seed_becomes_flat_with_ids_refs_and_defaults() -> None:
    flat = seed_flat("kong-service.yaml")
    service, route, plugin = flat["services"][0], flat["routes"][0], flat["plugins"][0]
    assert all(is_uuid(e["id"]) for e in (service, route, plugin))
    assert "routes" not in service
    assert "plugins" not in service
    # Kong splits a service's url and fills its defaults.
    assert (service["protocol"], service["host"], service["port"], service["path"]) == (
        "https",
        "api.openai.com",
        443,
        None,
    )
    assert service["url"] is None
    assert service["retries"] == 5
    assert route["service"] == {"id": service["id"]}
    assert plugin["service"] == {"id": service["id"]}
    assert plugin["route"] is plugin["consumer"] is plugin["consumer_group"] is None
    assert plugin["enabled"] is True
    assert plugin["protocols"] == ["grpc", "grpcs", "http", "https"]
    # Kong's defaults are filled in; what the file said is kept.
    balancer = plugin["config"]["balancer"]
    assert balancer["algorithm"] == "lowest-usage"
    assert balancer["retries"] == 5
    assert balancer["slots"] == 10000
    assert plugin["config"]["response_streaming"] == "allow"
    assert plugin["config"]["targets"][0]["weight"] == 100
    for entity in (service, route, plugin):
        assert entity["created_at"] == entity["updated_at"] == NOW


def test_ids_are_the_same_on_every_replica_and_at_every_time() -> None:
    first, second = seed_flat("kong-route.yaml", 1), seed_flat("kong-route.yaml", 2)
    assert [e["id"] for kind in ("services", "routes", "plugins") for e in first[kind]] == [
        e["id"] for kind in ("services", "routes", "plugins") for e in second[kind]
    ]
    assert first["plugins"][0]["created_at"] == 1
    assert second["plugins"][0]["created_at"] == 2


def test_ids_and_timestamps_given_in_the_file_are_kept() -> None:
    service_id = str(uuid.uuid4())
    flat = flat_of(
        {
            "services": [
                {"name": "s", "id": service_id, "url": "http://u", "created_at": 5, "updated_at": 6}
            ]
        }
    )
    service = flat["services"][0]
    assert (service["id"], service["created_at"], service["updated_at"]) == (service_id, 5, 6)


def test_every_nested_form_flattens() -> None:
    flat = flat_of(
        {
            "_format_version": "3.0",
            "services": [
                {
                    "name": "svc",
                    "url": "http://upstream:9000/v1",
                    "plugins": [{"name": "ai-proxy-advanced", "config": plugin_config("s")}],
                    "routes": [
                        {
                            "name": "chat",
                            "paths": ["/chat"],
                            "plugins": [
                                {"name": "ai-proxy-advanced", "config": plugin_config("r")}
                            ],
                        }
                    ],
                }
            ],
            "routes": [{"name": "other", "paths": ["/other"], "service": "svc"}],
            "consumer_groups": [
                {
                    "name": "gold",
                    "consumers": ["bob"],
                    "plugins": [{"name": "ai-proxy-advanced", "config": plugin_config("g")}],
                }
            ],
            "consumers": [
                {
                    "username": "alice",
                    "groups": ["gold"],
                    "keyauth_credentials": [{"key": "alice-key"}],
                    "plugins": [{"name": "ai-proxy-advanced", "config": plugin_config("c")}],
                },
                {"username": "bob"},
                {"custom_id": "carol-1"},
            ],
            "keyauth_credentials": [{"key": "bob-key", "consumer": "bob"}],
            "plugins": [
                {
                    "name": "ai-proxy-advanced",
                    "route": "chat",
                    "consumer": "alice",
                    "config": plugin_config("rc"),
                }
            ],
        }
    )
    svc = by_name(flat["services"], "svc")
    chat, other = by_name(flat["routes"], "chat"), by_name(flat["routes"], "other")
    gold = by_name(flat["consumer_groups"], "gold")
    alice = by_name(flat["consumers"], "alice", "username")
    bob = by_name(flat["consumers"], "bob", "username")
    assert svc["path"] == "/v1"
    assert svc["port"] == 9000
    assert chat["service"] == other["service"] == {"id": svc["id"]}
    assert "consumers" not in gold
    assert "plugins" not in gold
    # Membership lives on the consumer, whichever side the file declared it on.
    assert alice["groups"] == [{"id": gold["id"]}]
    assert bob["groups"] == [{"id": gold["id"]}]
    assert "keyauth_credentials" not in alice
    owners = {c["key"]: c["consumer"]["id"] for c in flat["keyauth_credentials"]}
    assert owners == {"alice-key": alice["id"], "bob-key": bob["id"]}

    def scope(plugin: dict[str, Any]) -> tuple[str | None, ...]:
        return tuple(
            (plugin[f] or {}).get("id") for f in ("service", "route", "consumer", "consumer_group")
        )

    scopes = {p["config"]["targets"][0]["model"]["name"]: scope(p) for p in flat["plugins"]}
    assert scopes == {
        "s": (svc["id"], None, None, None),
        "r": (None, chat["id"], None, None),
        "g": (None, None, None, gold["id"]),
        "c": (None, None, alice["id"], None),
        "rc": (None, chat["id"], alice["id"], None),
    }
    for kind in ("services", "routes", "consumers", "consumer_groups", "plugins"):
        ids = [e["id"] for e in flat[kind]]
        assert ids == sorted(ids), f"{kind} are listed in id order, as Kong pages them"


def test_credential_ids_do_not_depend_on_the_key() -> None:
    def credential_id(key: str) -> str:
        flat = flat_of({"consumers": [{"username": "a", "keyauth_credentials": [{"key": key}]}]})
        cred_id: str = flat["keyauth_credentials"][0]["id"]
        return cred_id

    assert credential_id("first-secret") == credential_id("second-secret")


def test_plugins_at_different_scopes_or_instances_get_different_ids() -> None:
    flat = flat_of(
        {
            "services": [
                {"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}
            ],
            "plugins": [
                {"name": "ai-proxy-advanced", "config": plugin_config()},
                {"name": "ai-proxy-advanced", "service": "s", "config": plugin_config()},
                {"name": "ai-proxy-advanced", "route": "r", "config": plugin_config()},
                {
                    "name": "ai-proxy-advanced",
                    "route": "r",
                    "instance_name": "second",
                    "config": plugin_config(),
                },
            ],
        }
    )
    assert len({p["id"] for p in flat["plugins"]}) == 4


def test_unknown_plugins_keep_their_config_as_given() -> None:
    flat = flat_of({"plugins": [{"name": "rate-limiting", "config": {"minute": 5}}]})
    assert flat["plugins"][0]["config"] == {"minute": 5}


def test_a_config_its_schema_refuses_is_kept_for_compile_to_report() -> None:
    bad = plugin_config() | {"balancer": {"algorithm": "fastest"}}
    flat = flat_of({"plugins": [{"name": "ai-proxy-advanced", "config": bad}]})
    assert flat["plugins"][0]["config"] == bad
    with pytest.raises(ConfigError) as info:
        validate(flat)
    assert [e.path for e in info.value.errors] == ["plugins[0].config.balancer.algorithm"]


def test_dangling_references_are_reported_with_their_path_in_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        flat_of(
            {
                "routes": [{"name": "r", "paths": ["/"], "service": "missing-svc"}],
                "consumers": [{"username": "a", "groups": ["missing-group"]}],
                "consumer_groups": [{"name": "g", "consumers": ["missing-consumer"]}],
                "keyauth_credentials": [{"key": "k", "consumer": "missing-consumer"}],
                "plugins": [
                    {"name": "ai-proxy-advanced", "route": "missing-route", "config": {}},
                    {"name": "ai-proxy-advanced", "consumer": {"id": "nope"}, "config": {}},
                ],
            }
        )
    assert {e.path: e.message for e in info.value.errors} == {
        "routes[0].service": "no service 'missing-svc'",
        "consumers[0].groups[0]": "no consumer_group 'missing-group'",
        "consumer_groups[0].consumers[0]": "no consumer 'missing-consumer'",
        "keyauth_credentials[0].consumer": "no consumer 'missing-consumer'",
        "plugins[0].route": "no route 'missing-route'",
        "plugins[1].consumer": "no consumer 'nope'",
    }


def test_duplicates_and_anonymous_consumers_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        flat_of(
            {
                "services": [{"name": "s", "url": "http://a"}, {"name": "s", "url": "http://b"}],
                "consumers": [{"username": "a"}, {"username": "a"}, {"tags": ["x"]}],
                "plugins": [
                    {"name": "ai-proxy-advanced", "config": plugin_config()},
                    {"name": "ai-proxy-advanced", "config": plugin_config("other")},
                ],
            }
        )
    assert {e.path for e in info.value.errors} == {
        "services[1]",
        "consumers[1]",
        "consumers[2]",
        "plugins[1]",
    }


def test_nest_gives_the_decks_form_with_names_and_ids() -> None:
    flat = seed_flat("kong-route.yaml")
    nested = nest(flat)
    assert list(nested) == ["_format_version", "services"]
    service = nested["services"][0]
    route = service["routes"][0]
    assert service["name"] == "openai-chat"
    assert service["id"] == flat["services"][0]["id"]
    assert route["name"] == "openai-chat-route"
    assert "service" not in route
    assert route["plugins"][0]["id"] == flat["plugins"][0]["id"]
    assert "route" not in route["plugins"][0]


def test_nest_keeps_multi_scope_plugins_at_the_top_with_names() -> None:
    flat = flat_of(
        {
            "services": [
                {"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}
            ],
            "consumers": [{"username": "alice"}],
            "plugins": [
                {"name": "ai-proxy-advanced", "route": "r", "consumer": "alice", "config": {}}
            ],
        }
    )
    plugin = nest(flat)["plugins"][0]
    assert (plugin["route"], plugin["consumer"]) == ("r", "alice")
    assert "service" not in plugin


@pytest.mark.parametrize(
    "seed",
    [
        "kong-global.yaml",
        "kong-service.yaml",
        "kong-route.yaml",
        "kong-consumer.yaml",
        "kong-consumer-group.yaml",
    ],
)
def test_every_seed_survives_a_dump_and_a_sync(seed: str) -> None:
    flat = seed_flat(seed)
    assert flat_of(yaml.safe_dump(nest(flat)), now=NOW + 1) == flat


def test_validate_compiles_the_flat_document() -> None:
    gateway = validate(seed_flat("kong-service.yaml"))
    assert [t.model_name for t in gateway.balancers[0].targets] == ["gpt-4", "gpt-4o-mini"]


def test_validate_reports_schema_violations_of_the_flat_document() -> None:
    flat = seed_flat("kong-global.yaml")
    broken = copy.deepcopy(flat)
    broken["plugins"][0]["enabled"] = "yes"
    with pytest.raises(ConfigError) as info:
        validate(broken)
    assert [e.path for e in info.value.errors] == ["plugins[0].enabled"]


# ------------------------------------------------------------ round trip, any document

NAMES = st.text("abcdefgh-", min_size=1, max_size=6)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A decK document using every form: nested and top-level routes, plugins at every
    scope (nested and top level, by name or {"id"}), credentials both ways, memberships
    both ways."""
    service_names = draw(st.lists(NAMES, max_size=3, unique=True))
    route_names = draw(st.lists(NAMES, max_size=4, unique=True))
    consumer_names = draw(st.lists(NAMES, max_size=3, unique=True))
    group_names = draw(st.lists(NAMES, max_size=2, unique=True))
    serial = iter(range(1000))

    def plugin(**scope: Any) -> dict[str, Any]:
        # A unique instance name keeps two plugins of the same scope apart.
        entry: dict[str, Any] = {"name": "ai-proxy-advanced", "instance_name": f"p{next(serial)}"}
        entry["config"] = plugin_config(draw(st.sampled_from(["a", "b"])))
        if draw(st.booleans()):
            entry["name"], entry["config"] = "key-auth", {"key_names": ["apikey"]}
        return entry | scope

    def maybe_plugins() -> list[dict[str, Any]]:
        return [plugin() for _ in range(draw(st.integers(0, 2)))]

    services = [
        {"name": n, "url": "http://u", "routes": [], "plugins": maybe_plugins()}
        for n in service_names
    ]
    routes: list[dict[str, Any]] = []
    for name in route_names:
        route = {"name": name, "paths": [f"/{name}"], "plugins": maybe_plugins()}
        owner = draw(st.sampled_from([None, *range(len(services))]))
        if owner is None:
            routes.append(route)
        elif draw(st.booleans()):
            services[owner]["routes"].append(route)
        else:
            routes.append(route | {"service": service_names[owner]})
    groups = [{"name": n, "consumers": [], "plugins": maybe_plugins()} for n in group_names]
    consumers = []
    credentials = []
    for name in consumer_names:
        consumer: dict[str, Any] = {"username": name, "plugins": maybe_plugins()}
        consumer["keyauth_credentials"] = [
            {"key": f"{name}-{i}"} for i in range(draw(st.integers(0, 2)))
        ]
        if draw(st.booleans()):
            credentials.append({"key": f"{name}-top", "consumer": name})
        for group in group_names:
            if draw(st.booleans()):
                consumer.setdefault("groups", []).append(group)
            elif draw(st.booleans()):
                groups[group_names.index(group)]["consumers"].append(name)
        consumers.append(consumer)
    top = []
    scopes = {
        "service": service_names,
        "route": route_names,
        "consumer": consumer_names,
        "consumer_group": group_names,
    }
    for _ in range(draw(st.integers(0, 3))):
        scope = {
            f: draw(st.sampled_from(n)) for f, n in scopes.items() if n and draw(st.booleans())
        }
        top.append(plugin(**scope))
    return {
        "_format_version": "3.0",
        "services": services,
        "routes": routes,
        "consumers": consumers,
        "consumer_groups": groups,
        "keyauth_credentials": credentials,
        "plugins": top,
    }


@settings(max_examples=60, deadline=None)
@given(documents())
def test_a_dump_syncs_back_to_the_same_document(doc: dict[str, Any]) -> None:
    flat = flat_of(doc)
    assert flat_of(yaml.safe_dump(nest(flat)), now=NOW + 1) == flat
    # And flattening is stable: the flat form is itself a valid decK document.
    assert flat_of(flat, now=NOW + 2) == flat
