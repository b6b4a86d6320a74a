"""Route matching with Kong's rules: which route (and so which balancer) serves a request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenlb_proxy.config import ConfigError, compile_gateway, parse_document
from tokenlb_proxy.plan import Gateway
from tokenlb_proxy.routing import match_route

PLUGIN = {
    "name": "ai-proxy-advanced",
    "config": {
        "targets": [
            {"model": {"name": "gpt-4o", "provider": "openai"}, "route_type": "llm/v1/chat"}
        ]
    },
}


def gateway(*routes: dict[str, Any]) -> Gateway:
    doc = {"_format_version": "3.0", "plugins": [PLUGIN], "routes": list(routes)}
    return compile_gateway(parse_document(json.dumps(doc), {}))


def matched(
    gw: Gateway,
    path: str,
    *,
    method: str = "POST",
    host: str = "localhost",
    headers: dict[str, str] | None = None,
) -> str | None:
    rule = match_route(gw, method, path, host, headers or {})
    return None if rule is None else rule.name


def test_longest_prefix_wins_whatever_the_order() -> None:
    gw = gateway(
        {"name": "short", "paths": ["/v1"]},
        {"name": "long", "paths": ["/v1/chat"]},
        {"name": "middle", "paths": ["/v1/ch"]},
    )
    assert matched(gw, "/v1/chat/completions") == "long"
    assert matched(gw, "/v1/chat") == "long"
    assert matched(gw, "/v1/models") == "short"
    assert matched(gw, "/v1/check") == "middle"
    assert matched(gw, "/v2/chat/completions") is None


def test_any_listed_path_matches() -> None:
    gw = gateway({"name": "r", "paths": ["/openai", "/llm"]})
    assert matched(gw, "/llm/v1/chat/completions") == "r"
    assert matched(gw, "/openai/v1/chat/completions") == "r"
    assert matched(gw, "/anthropic/v1/messages") is None


def test_plain_paths_are_literal_not_regexes() -> None:
    gw = gateway({"name": "r", "paths": ["/models/v.+"]})
    assert matched(gw, "/models/v.+/chat") == "r"
    assert matched(gw, "/models/v1/chat") is None


def test_regex_path_with_tilde_is_anchored_at_the_start() -> None:
    gw = gateway({"name": "re", "paths": [r"~/models/[^/]+/chat$"]})
    assert matched(gw, "/models/gpt-4o/chat") == "re"
    assert matched(gw, "/models/gpt-4o/chat/extra") is None
    assert matched(gw, "/api/models/gpt-4o/chat") is None


def test_regex_path_beats_a_longer_plain_prefix() -> None:
    gw = gateway(
        {"name": "prefix", "paths": ["/v1/chat/completions"]},
        {"name": "regex", "paths": [r"~/v1/\w+"]},
    )
    assert matched(gw, "/v1/chat/completions") == "regex"


def test_higher_regex_priority_wins_then_the_earlier_route() -> None:
    routes = [
        {"name": "low", "paths": [r"~/v1/chat/.*"], "regex_priority": 0},
        {"name": "high", "paths": [r"~/v1/.*"], "regex_priority": 10},
    ]
    assert matched(gateway(*routes), "/v1/chat/completions") == "high"
    assert matched(gateway(*reversed(routes)), "/v1/chat/completions") == "high"
    tied = [{"name": "first", "paths": [r"~/v1/.*"]}, {"name": "second", "paths": [r"~/v1/.*"]}]
    assert matched(gateway(*tied), "/v1/chat/completions") == "first"


def test_methods_restrict_a_route() -> None:
    gw = gateway({"name": "post-only", "paths": ["/v1"], "methods": ["POST"]})
    assert matched(gw, "/v1/chat/completions", method="POST") == "post-only"
    assert matched(gw, "/v1/chat/completions", method="GET") is None


def test_methods_in_config_are_case_insensitive() -> None:
    gw = gateway({"name": "r", "paths": ["/v1"], "methods": ["post"]})
    assert matched(gw, "/v1/chat/completions", method="POST") == "r"


def test_exact_host_matches_case_insensitively_and_ignores_the_port() -> None:
    gw = gateway({"name": "api", "hosts": ["API.example.com"], "paths": ["/"]})
    assert matched(gw, "/v1/chat/completions", host="api.example.com") == "api"
    assert matched(gw, "/v1/chat/completions", host="Api.Example.COM:8000") == "api"
    assert matched(gw, "/v1/chat/completions", host="www.example.com") is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.example.com", "suffix"),
        ("x.y.example.com", "suffix"),
        ("example.com", "prefix"),
        ("example.org", "prefix"),
        ("example.co.uk", "prefix"),
        ("notexample.com", None),
        ("www.example.org", None),
        ("example", None),
    ],
)
def test_wildcard_hosts_at_either_end(host: str, expected: str | None) -> None:
    gw = gateway(
        {"name": "suffix", "hosts": ["*.example.com"]},
        {"name": "prefix", "hosts": ["example.*"]},
    )
    assert matched(gw, "/v1/chat/completions", host=host) == expected


def test_plain_host_beats_wildcard_host() -> None:
    gw = gateway(
        {"name": "wildcard", "hosts": ["*.example.com"], "paths": ["/v1"]},
        {"name": "plain", "hosts": ["api.example.com"], "paths": ["/v1"]},
    )
    assert matched(gw, "/v1/chat/completions", host="api.example.com") == "plain"
    assert matched(gw, "/v1/chat/completions", host="eu.example.com") == "wildcard"


def test_headers_all_names_required_any_value_matches() -> None:
    gw = gateway(
        {
            "name": "tenant",
            "paths": ["/v1"],
            "headers": {"X-Tenant": ["acme", "globex"], "X-Tier": ["gold"]},
        },
        {"name": "fallback", "paths": ["/v1"]},
    )
    assert matched(gw, "/v1/chat", headers={"x-tenant": "globex", "x-tier": "gold"}) == "tenant"
    assert matched(gw, "/v1/chat", headers={"x-tenant": "acme", "x-tier": "gold"}) == "tenant"
    assert matched(gw, "/v1/chat", headers={"x-tenant": "initech", "x-tier": "gold"}) == (
        "fallback"
    )
    assert matched(gw, "/v1/chat", headers={"x-tenant": "acme"}) == "fallback"
    assert matched(gw, "/v1/chat") == "fallback"


def test_route_with_more_fields_set_beats_a_longer_path() -> None:
    gw = gateway(
        {"name": "long-path", "paths": ["/v1/chat/completions"]},
        {"name": "post-v1", "paths": ["/v1"], "methods": ["POST"]},
    )
    assert matched(gw, "/v1/chat/completions", method="POST") == "post-v1"
    assert matched(gw, "/v1/chat/completions", method="GET") == "long-path"


def test_host_and_path_route_beats_path_only_route() -> None:
    gw = gateway(
        {"name": "any-host", "paths": ["/v1/chat"]},
        {"name": "team-host", "paths": ["/v1"], "hosts": ["team.example.com"]},
    )
    assert matched(gw, "/v1/chat/completions", host="team.example.com") == "team-host"
    assert matched(gw, "/v1/chat/completions", host="other.example.com") == "any-host"


def test_every_set_field_must_match() -> None:
    gw = gateway(
        {
            "name": "strict",
            "paths": ["/v1"],
            "methods": ["POST"],
            "hosts": ["api.example.com"],
            "headers": {"x-team": ["ml"]},
        }
    )
    host, team = "api.example.com", {"x-team": "ml"}
    assert matched(gw, "/v1/chat", host=host, headers=team) == "strict"
    assert matched(gw, "/v2/chat", host=host, headers=team) is None
    assert matched(gw, "/v1/chat", method="PUT", host=host, headers=team) is None
    assert matched(gw, "/v1/chat", host="b.example.com", headers={"x-team": "ml"}) is None
    assert matched(gw, "/v1/chat", host="api.example.com", headers={"x-team": "ops"}) is None


def test_no_matching_route_gives_none() -> None:
    gw = gateway({"name": "r", "paths": ["/openai"], "methods": ["POST"]})
    assert matched(gw, "/") is None
    assert matched(gw, "/other") is None


def test_config_without_routes_serves_only_post_chat_completions() -> None:
    doc = {"_format_version": "3.0", "plugins": [PLUGIN]}
    gw = compile_gateway(parse_document(json.dumps(doc), {}))
    rule = match_route(gw, "POST", "/v1/chat/completions", "localhost", {})
    assert rule is not None
    assert rule.name == "default"
    assert rule.plan is gw.balancers[0]
    assert match_route(gw, "GET", "/v1/chat/completions", "localhost", {}) is None
    assert match_route(gw, "POST", "/v1/embeddings", "localhost", {}) is None
    assert match_route(gw, "POST", "/chat/completions", "localhost", {}) is None


def test_route_without_any_matching_field_is_a_config_error() -> None:
    doc = {"_format_version": "3.0", "plugins": [PLUGIN], "routes": [{"name": "empty"}]}
    with pytest.raises(ConfigError) as info:
        compile_gateway(parse_document(json.dumps(doc), {}))
    assert [e.path for e in info.value.errors] == ["routes[0]"]


@pytest.mark.parametrize(
    ("path", "message"),
    [("~/v1/(unclosed", "invalid regex"), ("v1/chat", "must start with /")],
)
def test_bad_route_paths_are_config_errors(path: str, message: str) -> None:
    doc = {"_format_version": "3.0", "plugins": [PLUGIN], "routes": [{"paths": ["/ok", path]}]}
    with pytest.raises(ConfigError) as info:
        compile_gateway(parse_document(json.dumps(doc), {}))
    [error] = info.value.errors
    assert error.path == "routes[0].paths[1]"
    assert message in error.message


def test_a_header_condition_counts_as_a_field() -> None:
    gw = gateway(
        {"name": "post-chat", "paths": ["/v1/chat/completions"], "methods": ["POST"]},
        {"name": "tenant", "paths": ["/v1"], "headers": {"x-tenant": ["acme"]}},
    )
    # Two fields each: then the route with more header conditions wins.
    assert matched(gw, "/v1/chat/completions", headers={"x-tenant": "acme"}) == "tenant"
    assert matched(gw, "/v1/chat/completions") == "post-chat"
