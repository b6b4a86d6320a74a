"""Plugin precedence, level by level, exactly as Kong's plugin iterator orders scopes.

Each test compiles a real config and asks the compiled route which ai-proxy-advanced
instance serves a given consumer; every plugin's single target names its own model, so
the model tells the instances apart.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenlb_proxy.config import compile_gateway, parse_document
from tokenlb_proxy.plan import Gateway, RouteRule
from tokenlb_proxy.routing import match_route

#: Kong's 12 levels, most specific first, as plugin references. alice is in group gold.
LEVELS: list[tuple[str, dict[str, str]]] = [
    ("consumer+route+service", {"consumer": "alice", "route": "r", "service": "s"}),
    ("group+route+service", {"consumer_group": "gold", "route": "r", "service": "s"}),
    ("consumer+route", {"consumer": "alice", "route": "r"}),
    ("consumer+service", {"consumer": "alice", "service": "s"}),
    ("group+route", {"consumer_group": "gold", "route": "r"}),
    ("group+service", {"consumer_group": "gold", "service": "s"}),
    ("route+service", {"route": "r", "service": "s"}),
    ("consumer", {"consumer": "alice"}),
    ("group", {"consumer_group": "gold"}),
    ("route", {"route": "r"}),
    ("service", {"service": "s"}),
    ("global", {}),
]
NAMES = [name for name, _ in LEVELS]


def plugin(model: str, **refs: str) -> dict[str, Any]:
    return {
        "name": "ai-proxy-advanced",
        **refs,
        "config": {
            "targets": [
                {"model": {"name": model, "provider": "openai"}, "route_type": "llm/v1/chat"}
            ]
        },
    }


def document(plugins: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "https://api.openai.com"}],
        "routes": [
            {"name": "r", "paths": ["/r"], "service": "s"},
            {"name": "lone", "paths": ["/lone"]},
        ],
        "consumers": [
            {"username": "alice", "groups": ["gold"]},
            {"username": "carol", "groups": [{"name": "gold"}]},
            {"username": "bob"},
        ],
        "consumer_groups": [{"name": "gold"}],
        "plugins": plugins,
    }
    doc.update(extra)
    return doc


def compile_doc(doc: dict[str, Any]) -> Gateway:
    return compile_gateway(parse_document(json.dumps(doc), {}), {})


def rule_for(gateway: Gateway, path: str) -> RouteRule:
    rule = match_route(gateway, "POST", path, "localhost", {})
    assert rule is not None
    return rule


def served(gateway: Gateway, consumer: str | None, path: str = "/r") -> str | None:
    """The model of the instance serving ``consumer`` (None: nobody identified) on ``path``."""
    rule = rule_for(gateway, path)
    plan = rule.plan if consumer is None else rule.consumer_plans.get(consumer, rule.plan)
    return plan.targets[0].model_name if plan is not None else None


def from_level(index: int) -> Gateway:
    """A config with a plugin on every level from ``index`` down to global."""
    return compile_doc(document([plugin(name, **refs) for name, refs in LEVELS[index:]]))


@pytest.mark.parametrize("index", range(len(LEVELS)), ids=NAMES)
def test_each_level_beats_every_less_specific_one(index: int) -> None:
    gateway = from_level(index)
    name = NAMES[index]
    assert served(gateway, "alice") == name
    # carol shares alice's group, not her consumer scopes.
    carol = next(n for n, refs in LEVELS[index:] if "consumer" not in refs)
    assert served(gateway, "carol") == carol
    # bob (no group) and an unidentified request get the first non-consumer level.
    anonymous = next(
        n for n, refs in LEVELS[index:] if not {"consumer", "consumer_group"} & set(refs)
    )
    assert served(gateway, "bob") == anonymous
    assert served(gateway, None) == anonymous


@pytest.mark.parametrize("index", range(len(LEVELS)), ids=NAMES)
def test_a_route_without_a_service_skips_the_service_levels(index: int) -> None:
    # Every level scoped to route "r" is re-pointed at the service-less route "lone".
    plugins = [
        plugin(name, **{k: ("lone" if k == "route" else v) for k, v in refs.items()})
        for name, refs in LEVELS[index:]
    ]
    gateway = compile_doc(document(plugins))
    expected = next(n for n, refs in LEVELS[index:] if "service" not in refs)
    assert served(gateway, "alice", "/lone") == expected


def test_the_group_whose_name_sorts_first_wins_on_the_same_level() -> None:
    doc = document(
        [plugin("b-team", consumer_group="b-team"), plugin("a-team", consumer_group="a-team")],
        consumer_groups=[{"name": "b-team"}, {"name": "a-team"}, {"name": "gold"}],
    )
    doc["consumers"][0]["groups"] = ["b-team", "a-team"]
    assert served(compile_doc(doc), "alice") == "a-team"


def test_a_more_specific_group_level_beats_a_group_that_sorts_first() -> None:
    doc = document(
        [
            plugin("a-team", consumer_group="a-team"),
            plugin("b-team", consumer_group="b-team", route="r"),
        ],
        consumer_groups=[
            {"name": "a-team"},
            {"name": "b-team", "consumers": ["alice"]},
            {"name": "gold"},
        ],
    )
    doc["consumers"][0]["groups"] = ["a-team"]
    gateway = compile_doc(doc)
    assert served(gateway, "alice") == "b-team"
    # On another route the b-team plugin does not apply: a-team's does.
    assert served(gateway, "alice", "/lone") == "a-team"


def test_membership_declared_on_the_group_counts() -> None:
    doc = document(
        [plugin("gold", consumer_group="gold")],
        consumer_groups=[{"name": "gold", "consumers": ["bob"]}],
    )
    gateway = compile_doc(doc)
    assert served(gateway, "bob") == "gold"
    assert served(gateway, "alice") == "gold"


def test_configs_without_consumer_plugins_have_no_consumer_plans() -> None:
    gateway = compile_doc(document([plugin("route", route="r"), plugin("global")]))
    assert all(not rule.consumer_plans for rule in gateway.routes)


def test_scoped_balancer_ids_name_every_part_of_the_scope() -> None:
    gateway = from_level(0)
    assert [plan.balancer_id for plan in gateway.balancers] == [
        "consumer:alice+route:r+service:s",
        "consumer_group:gold+route:r+service:s",
        "consumer:alice+route:r",
        "consumer:alice+service:s",
        "consumer_group:gold+route:r",
        "consumer_group:gold+service:s",
        "route:r+service:s",
        "consumer:alice",
        "consumer_group:gold",
        "route:r",
        "service:s",
        "global",
    ]


def test_nested_plugins_take_the_scope_they_are_nested_in() -> None:
    doc = document(
        [],
        consumers=[
            {"username": "alice", "plugins": [plugin("alice-own", route="r")]},
            {"username": "bob"},
        ],
        consumer_groups=[{"name": "gold", "consumers": ["bob"], "plugins": [plugin("gold-own")]}],
    )
    gateway = compile_doc(doc)
    assert served(gateway, "alice") == "alice-own"
    assert served(gateway, "alice", "/lone") is None
    assert served(gateway, "bob", "/lone") == "gold-own"
    assert {plan.balancer_id for plan in gateway.balancers} == {
        "consumer:alice+route:r",
        "consumer_group:gold",
    }
