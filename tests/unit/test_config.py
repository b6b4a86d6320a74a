"""Config: every form Kong's ai-proxy-advanced docs show, validation, and compilation.

The files under tests/data/seed/ are the blocks of Kong's "Load balancing: Lowest-usage"
page, copied unchanged (only the docs' ``serviceName|Id``-style placeholders are filled
in with a real name, and the service / route / consumer they name is declared).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenlb_proxy.config import (
    ConfigError,
    FieldError,
    compile_gateway,
    load_document,
    parse_document,
)
from tokenlb_proxy.plan import OPENAI_CHAT_URL, BalancerPlan, Gateway
from tokenlb_proxy.routing import match_route

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
KEY = "sk-test-5f1c0ffee"
ENV = {"DECK_OPENAI_API_KEY": KEY}
P0 = "plugins[0].config"


# ---------------------------------------------------------------------------- helpers


def load_seed(name: str, environ: dict[str, str] | None = None) -> Gateway:
    return compile_gateway(load_document(SEED / name, ENV if environ is None else environ))


def compile_doc(doc: dict[str, Any], environ: dict[str, str] | None = None) -> Gateway:
    # JSON is YAML: the document goes through the same text parser a file does.
    return compile_gateway(parse_document(json.dumps(doc), ENV if environ is None else environ))


def errors_of(doc: dict[str, Any], environ: dict[str, str] | None = None) -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        compile_doc(doc, environ)
    return info.value.errors


def error_paths(doc: dict[str, Any]) -> dict[str, str]:
    return {e.path: e.message for e in errors_of(doc)}


def seed_config() -> dict[str, Any]:
    """The plugin ``config`` of Kong's global kong.yaml example, as a fresh dict."""
    doc = yaml.safe_load((SEED / "kong-global.yaml").read_text())
    config: dict[str, Any] = doc["plugins"][0]["config"]
    return config


def global_doc(config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "plugins": [{"name": "ai-proxy-advanced", "config": config or seed_config()}],
    }


def with_setting(dotted: str, value: Any) -> dict[str, Any]:
    """The seed config with one setting changed; ``dotted`` like ``targets[0].model.name``."""
    config = seed_config()
    node: Any = config
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value
    return global_doc(config)


def config_for(model: str) -> dict[str, Any]:
    """A minimal valid config whose single target names ``model`` (to tell plans apart)."""
    return {
        "targets": [{"model": {"name": model, "provider": "openai"}, "route_type": "llm/v1/chat"}]
    }


def only_plan(gateway: Gateway) -> BalancerPlan:
    assert len(gateway.balancers) == 1
    return gateway.balancers[0]


def assert_seed_balancer(plan: BalancerPlan) -> None:
    """What Kong's lowest-usage example must compile into."""
    assert plan.algorithm == "lowest-usage"
    assert plan.tokens_count_strategy == "prompt-tokens"
    assert [t.model_name for t in plan.targets] == ["gpt-4", "gpt-4o-mini"]
    for target in plan.targets:
        assert target.provider == "openai"
        assert target.url == OPENAI_CHAT_URL
        assert target.weight == 100
        assert target.options.max_tokens == 512
        assert target.options.temperature == 1.0
        assert target.auth_headers == (("authorization", f"Bearer {KEY}"),)
    assert plan.by_model == {"gpt-4": (0,), "gpt-4o-mini": (1,)}


def served_by(gateway: Gateway, path: str, method: str = "POST") -> BalancerPlan | None:
    rule = match_route(gateway, method, path, "localhost", {})
    assert rule is not None, f"no route for {method} {path}"
    return rule.plan


# ------------------------------------------------------------ the docs' kong.yaml forms


def test_global_kong_yaml_compiles_into_the_documented_balancer() -> None:
    gateway = load_seed("kong-global.yaml")
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    assert plan.balancer_id == "global"
    # No routes in the file: the global plugin serves the OpenAI chat path.
    assert served_by(gateway, "/v1/chat/completions") is plan


def test_service_kong_yaml_applies_to_the_services_routes() -> None:
    gateway = load_seed("kong-service.yaml")
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    assert plan.balancer_id == "service:openai-chat"
    assert served_by(gateway, "/openai/v1/chat/completions") is plan
    assert match_route(gateway, "POST", "/v1/chat/completions", "localhost", {}) is None


def test_route_kong_yaml_applies_to_that_route() -> None:
    gateway = load_seed("kong-route.yaml")
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    assert plan.balancer_id == "route:openai-chat-route"
    assert served_by(gateway, "/openai/v1/chat/completions") is plan


def test_consumer_kong_yaml_serves_that_consumer_only() -> None:
    gateway = load_seed("kong-consumer.yaml")
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    assert plan.balancer_id == "consumer:alice"
    [rule] = gateway.routes
    # Nobody identified: no plugin applies; alice: hers.
    assert rule.plan is None
    assert dict(rule.consumer_plans) == {"alice": plan}


def test_consumer_group_kong_yaml_serves_the_groups_members() -> None:
    text = (SEED / "kong-consumer-group.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["consumers"] = [{"username": "bob", "groups": [{"name": "premium"}]}, {"username": "eve"}]
    gateway = compile_doc(doc)
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    assert plan.balancer_id == "consumer_group:premium"
    [rule] = gateway.routes
    assert rule.plan is None
    assert dict(rule.consumer_plans) == {"bob": plan}


def test_consumer_scoped_plugin_does_not_clash_with_the_global_one() -> None:
    doc = global_doc()
    doc["plugins"].append(
        {**copy.deepcopy(doc["plugins"][0]), "consumer": "alice", "config": config_for("m")}
    )
    doc["consumers"] = [{"username": "alice"}]
    gateway = compile_doc(doc)
    [rule] = gateway.routes
    assert rule.plan is not None
    assert rule.plan.balancer_id == "global"
    assert rule.consumer_plans["alice"].balancer_id == "consumer:alice"


def test_an_empty_config_compiles_to_a_route_without_a_plugin() -> None:
    # Where the Admin API starts from: Kong accepts it, and so does tokenlb.
    gateway = compile_doc({"_format_version": "3.0", "services": [{"name": "s"}]})
    assert gateway.balancers == ()
    assert served_by(gateway, "/v1/chat/completions") is None


def test_admin_api_body_compiles_as_a_global_plugin() -> None:
    text = (SEED / "admin-global.json").read_text()
    # What curl sends once the shell has expanded '$OPENAI_API_KEY' in --data '...'.
    sent = text.replace("'$OPENAI_API_KEY'", KEY)
    gateway = compile_gateway(parse_document(sent, {}))
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    assert plan.balancer_id == "global"
    assert served_by(gateway, "/v1/chat/completions") is plan


def test_only_deck_placeholders_are_substituted_not_shell_variables() -> None:
    gateway = load_seed("admin-global.json", {"OPENAI_API_KEY": KEY})
    for target in only_plan(gateway).targets:
        assert target.auth_headers == (("authorization", "Bearer '$OPENAI_API_KEY'"),)


@pytest.mark.parametrize("name", ["kubernetes-cluster-plugin.yaml", "kubernetes-plugin.yaml"])
def test_kong_plugin_manifests_compile_as_a_global_plugin(name: str) -> None:
    text = (SEED / name).read_text()
    # `echo "..." | kubectl apply -f -`: the shell expands $OPENAI_API_KEY first.
    applied = text.replace("$OPENAI_API_KEY", KEY)
    gateway = compile_gateway(parse_document(applied, {}))
    plan = only_plan(gateway)
    assert_seed_balancer(plan)
    # metadata.name becomes the instance name, and so the balancer's id.
    assert plan.balancer_id == "ai-proxy-advanced"
    assert served_by(gateway, "/v1/chat/completions") is plan


# -------------------------------------------------------------- decK env substitution


def test_missing_deck_variable_names_the_field_and_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_seed("kong-global.yaml", {})
    assert [e.path for e in info.value.errors] == [
        f"{P0}.targets[0].auth.header_value",
        f"{P0}.targets[1].auth.header_value",
    ]
    assert all("DECK_OPENAI_API_KEY" in e.message for e in info.value.errors)


def test_placeholder_without_deck_prefix_is_rejected_even_when_set() -> None:
    text = (SEED / "kong-global.yaml").read_text().replace("DECK_OPENAI_API_KEY", "OPENAI_API_KEY")
    with pytest.raises(ConfigError) as info:
        parse_document(text, {"OPENAI_API_KEY": KEY})
    errors = info.value.errors
    assert [e.path for e in errors] == [
        f"{P0}.targets[0].auth.header_value",
        f"{P0}.targets[1].auth.header_value",
    ]
    assert all("OPENAI_API_KEY" in e.message and "DECK_" in e.message for e in errors)
    assert KEY not in str(info.value)


# ------------------------------------------------------------------- plugin precedence


def test_route_plugin_beats_service_plugin_beats_global_plugin() -> None:
    doc = {
        "_format_version": "3.0",
        "plugins": [
            {"name": "ai-proxy-advanced", "config": config_for("global-model")},
            {"name": "ai-proxy-advanced", "route": "e", "config": config_for("e-model")},
        ],
        "services": [
            {
                "name": "svc",
                "url": "https://api.openai.com",
                "plugins": [{"name": "ai-proxy-advanced", "config": config_for("svc-model")}],
                "routes": [
                    {
                        "name": "a",
                        "paths": ["/a"],
                        "plugins": [{"name": "ai-proxy-advanced", "config": config_for("a-model")}],
                    },
                    {"name": "b", "paths": ["/b"]},
                    {"name": "e", "paths": ["/e"]},
                ],
            },
            {"name": "bare", "url": "https://api.openai.com", "routes": [{"paths": ["/c"]}]},
        ],
        "routes": [{"name": "d", "paths": ["/d"], "service": {"name": "svc"}}],
    }
    gateway = compile_doc(doc)

    def model(path: str) -> str | None:
        plan = served_by(gateway, path)
        assert plan is not None
        return plan.targets[0].model_name

    assert model("/a") == "a-model"  # route plugin nested in the route
    assert model("/e") == "e-model"  # route plugin declared at the top level
    assert model("/b") == "svc-model"  # service plugin
    assert model("/d") == "svc-model"  # top-level route referencing the service
    assert model("/c") == "global-model"  # nothing more specific
    assert {p.balancer_id for p in gateway.balancers} == {
        "global",
        "route:e",
        "service:svc",
        "route:a",
    }


# ----------------------------------------------------------- "not supported yet" fields


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("balancer.algorithm", "semantic"),
        ("balancer.tokens_count_strategy", "llm-accuracy"),
        ("targets[0].model.provider", "anthropic"),
        ("targets[1].model.provider", "azure"),
        ("targets[0].route_type", "llm/v1/embeddings"),
        ("targets[0].route_type", "llm/v1/completions"),
        ("targets[1].model.options.top_k", 40),
        ("targets[0].model.options.azure_instance", "my-instance"),
        ("targets[0].auth.azure_client_id", "00000000-client"),
        ("targets[0].auth.aws_access_key_id", "AKIA0000"),
        ("targets[0].auth.gcp_use_service_account", True),
        ("embeddings", {"model": {"provider": "openai", "name": "text-embedding-3-small"}}),
        ("vectordb", {"strategy": "redis"}),
        ("llm_format", "gemini"),
        ("genai_category", "text/embeddings"),
    ],
)
def test_unsupported_setting_is_rejected_at_its_path(setting: str, value: Any) -> None:
    [error] = errors_of(with_setting(setting, value))
    assert error.path == f"{P0}.{setting}"
    assert "not supported yet" in error.message


def test_circuit_breaker_settings_compile() -> None:
    config = seed_config()
    config["balancer"] = {"max_fails": 3, "fail_timeout": 5000}
    plan = only_plan(compile_doc(global_doc(config)))
    assert (plan.max_fails, plan.fail_timeout_ms) == (3, 5000)
    # Kong's defaults: off, 10 s.
    default = only_plan(compile_doc(global_doc(seed_config())))
    assert (default.max_fails, default.fail_timeout_ms) == (0, 10000)


def test_consistent_hashing_compiles_its_buckets() -> None:
    config = seed_config()
    config["balancer"] = {
        "algorithm": "consistent-hashing",
        "hash_on_header": "X-User",
        "slots": 100,
    }
    plan = only_plan(compile_doc(global_doc(config)))
    assert plan.algorithm == "consistent-hashing"
    assert plan.hash_on_header == "x-user"
    assert plan.hashing is not None
    assert plan.hashing.slots == 100
    # Other algorithms need none.
    assert only_plan(compile_doc(global_doc(seed_config()))).hashing is None


def test_priority_groups_targets_by_weight_heaviest_first() -> None:
    config = seed_config()
    config["balancer"] = {"algorithm": "priority"}
    extra = copy.deepcopy(config["targets"][1])
    extra["model"]["name"] = "gpt-3.5-turbo"
    config["targets"].append(extra)
    for target, weight in zip(config["targets"], (25, 70, 70), strict=True):
        target["weight"] = weight
    plan = only_plan(compile_doc(global_doc(config)))
    assert plan.algorithm == "priority"
    assert [t.priority_tier for t in plan.targets] == [1, 0, 0]


def test_target_limits_extension_compiles() -> None:
    doc = with_setting("targets[1].limits", {"tokens_per_minute": 90000})
    doc["plugins"][0]["config"]["targets"][0]["limits"] = {"requests_per_minute": 500}
    plan = only_plan(compile_doc(doc))
    assert [(t.tokens_per_minute, t.requests_per_minute) for t in plan.targets] == [
        (0, 500),
        (90000, 0),
    ]
    assert [t.budgeted for t in plan.targets] == [True, True]
    assert not only_plan(compile_doc(global_doc(seed_config()))).targets[0].budgeted


@pytest.mark.parametrize(
    ("limits", "path"),
    [
        ({"tokens_per_minute": 0}, "targets[0].limits.tokens_per_minute"),
        ({"requests_per_minute": -5}, "targets[0].limits.requests_per_minute"),
        ({"tokens_per_day": 5}, "targets[0].limits.tokens_per_day"),
    ],
)
def test_target_limits_are_validated(limits: dict[str, int], path: str) -> None:
    assert list(error_paths(with_setting("targets[0].limits", limits))) == [f"{P0}.{path}"]


def test_supported_settings_of_the_same_fields_compile() -> None:
    config = seed_config()
    config["balancer"] = {"algorithm": "round-robin", "tokens_count_strategy": "total-tokens"}
    config["targets"][0]["model"]["options"]["upstream_url"] = "http://llm.internal/v1/chat"
    plan = only_plan(compile_doc(global_doc(config)))
    assert plan.algorithm == "round-robin"
    assert plan.tokens_count_strategy == "total-tokens"
    assert plan.targets[0].url == "http://llm.internal/v1/chat"


# ----------------------------------------------------- schema: unknown fields and types


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (with_setting("balancer.algorithmm", "lowest-usage"), f"{P0}.balancer.algorithmm"),
        (
            with_setting("targets[0].model.options.temprature", 1),
            f"{P0}.targets[0].model.options.temprature",
        ),
        (with_setting("targets[1].auth.header", "x"), f"{P0}.targets[1].auth.header"),
        (with_setting("acls", ["admins"]), f"{P0}.acls"),
        ({**global_doc(), "servics": []}, "servics"),
        ({"plugins": [{"name": "ai-proxy-advanced", "confg": {}}]}, "plugins[0].confg"),
    ],
)
def test_unknown_field_is_rejected_at_its_own_path(doc: dict[str, Any], path: str) -> None:
    [error] = errors_of(doc)
    assert error.path == path
    assert "unknown field" in error.message


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("targets[0].weight", 0, ">= 1"),
        ("targets[0].weight", 70000, "<= 65535"),
        ("targets[1].weight", "heavy", "Expected `int`"),
        ("targets[0].model.options.temperature", 6, "<= 5"),
        ("targets[0].model.options.top_p", 1.5, "<= 1"),
        ("targets[0].model.options.max_tokens", "lots", "got `str`"),
        ("balancer.retries", -1, ">= 0"),
        ("balancer.usage_half_life", 0, "> 0"),
        ("balancer.algorithm", "fastest", "Invalid enum value"),
        ("response_streaming", "sometimes", "Invalid enum value"),
        ("targets[0].model.options.input_cost", 0, "> 0"),
    ],
)
def test_wrong_type_or_out_of_range_value_is_rejected_at_its_path(
    setting: str, value: Any, fragment: str
) -> None:
    [error] = errors_of(with_setting(setting, value))
    assert error.path == f"{P0}.{setting}"
    assert fragment in error.message


def test_missing_required_fields_are_reported() -> None:
    assert error_paths(global_doc({"balancer": {"algorithm": "lowest-usage"}})) == {
        P0: "Object missing required field `targets`"
    }
    config = seed_config()
    del config["targets"][1]["model"]["provider"]
    assert error_paths(global_doc(config)) == {
        f"{P0}.targets[1].model": "Object missing required field `provider`"
    }


def test_empty_targets_are_rejected() -> None:
    [error] = errors_of(global_doc({"targets": []}))
    assert error.path == f"{P0}.targets"


# ----------------------------------------------------------------- Kong's cross rules


def test_cost_strategy_needs_both_prices_on_every_target_and_log_statistics() -> None:
    config = seed_config()
    config["balancer"]["tokens_count_strategy"] = "cost"
    first, second = config["targets"]
    first["model"]["options"]["input_cost"] = 30
    first["logging"] = {"log_statistics": True}
    second["model"]["options"].update(input_cost=0.15, output_cost=0.6)
    assert sorted(error_paths(global_doc(config))) == [
        f"{P0}.targets[0].model.options.output_cost",
        f"{P0}.targets[1].logging.log_statistics",
    ]


def test_cost_strategy_without_anything_lists_each_missing_piece() -> None:
    errors = errors_of(with_setting("balancer.tokens_count_strategy", "cost"))
    assert sorted(e.path for e in errors) == sorted(
        f"{P0}.targets[{i}].{field}"
        for i in (0, 1)
        for field in (
            "model.options.input_cost",
            "model.options.output_cost",
            "logging.log_statistics",
        )
    )


def test_cost_strategy_with_prices_and_log_statistics_compiles() -> None:
    config = seed_config()
    config["balancer"]["tokens_count_strategy"] = "cost"
    for target, prices in zip(config["targets"], [(30, 60), (0.15, 0.6)], strict=True):
        target["model"]["options"].update(input_cost=prices[0], output_cost=prices[1])
        target["logging"] = {"log_statistics": True}
    plan = only_plan(compile_doc(global_doc(config)))
    assert plan.tokens_count_strategy == "cost"
    assert [(t.input_cost, t.output_cost) for t in plan.targets] == [(30, 60), (0.15, 0.6)]
    assert all(t.log_statistics for t in plan.targets)


@pytest.mark.parametrize("drop", ["header_value", "header_name"])
def test_header_name_and_value_must_come_together(drop: str) -> None:
    config = seed_config()
    del config["targets"][0]["auth"][drop]
    [error] = errors_of(global_doc(config))
    assert error.path == f"{P0}.targets[0].auth"
    assert "header_name and header_value" in error.message


@pytest.mark.parametrize(
    "auth",
    [
        {"param_name": "api-key"},
        {"param_name": "api-key", "param_value": "secret"},
        {"param_value": "secret", "param_location": "query"},
        {"param_location": "body"},
    ],
)
def test_param_name_value_and_location_must_come_together(auth: dict[str, str]) -> None:
    config = seed_config()
    config["targets"][1]["auth"] = auth
    [error] = errors_of(global_doc(config))
    assert error.path == f"{P0}.targets[1].auth"
    assert "param_name, param_value and param_location" in error.message


def test_query_and_body_auth_params_are_compiled() -> None:
    config = seed_config()
    config["targets"][0]["auth"] = {
        "param_name": "api-key",
        "param_value": "q-secret",
        "param_location": "query",
    }
    config["targets"][1]["auth"] = {
        "param_name": "api_key",
        "param_value": "b-secret",
        "param_location": "body",
        "allow_override": True,
    }
    first, second = only_plan(compile_doc(global_doc(config))).targets
    assert (first.auth_headers, first.auth_query, first.auth_body) == (
        (),
        (("api-key", "q-secret"),),
        (),
    )
    assert second.auth_body == (("api_key", "b-secret"),)
    assert second.allow_override
    assert not first.allow_override


# ------------------------------------------------------------------ references, scopes


def test_route_naming_a_missing_service_is_an_error() -> None:
    doc = {**global_doc(), "routes": [{"name": "r", "paths": ["/x"], "service": "nope"}]}
    [error] = errors_of(doc)
    assert error.path == "routes[0].service"
    assert "'nope'" in error.message


@pytest.mark.parametrize(("field", "kind"), [("route", "route"), ("service", "service")])
def test_plugin_naming_a_missing_entity_is_an_error(field: str, kind: str) -> None:
    doc = global_doc()
    doc["plugins"][0][field] = "ghost"
    [error] = errors_of(doc)
    assert error.path == f"plugins[0].{field}"
    assert error.message == f"no {kind} 'ghost'"


def test_references_by_id_and_by_object_resolve() -> None:
    doc = {
        "_format_version": "3.0",
        "services": [{"id": "5b1e", "name": "svc", "url": "https://api.openai.com"}],
        "routes": [{"id": "77aa", "paths": ["/x"], "service": {"id": "5b1e"}}],
        "plugins": [
            {"name": "ai-proxy-advanced", "route": {"id": "77aa"}, "config": seed_config()}
        ],
    }
    gateway = compile_doc(doc)
    plan = only_plan(gateway)
    assert served_by(gateway, "/x") is plan
    assert plan.balancer_id == "route:77aa"


def test_two_plugins_on_the_same_scope_are_an_error() -> None:
    doc = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "svc",
                "routes": [{"name": "r", "paths": ["/x"]}],
                "plugins": [{"name": "ai-proxy-advanced", "config": seed_config()}],
            }
        ],
        "plugins": [{"name": "ai-proxy-advanced", "service": "svc", "config": seed_config()}],
    }
    [error] = errors_of(doc)
    assert error.path == "services[0].plugins[0]"
    assert "same scope as plugins[0]" in error.message


def test_two_global_plugins_are_an_error() -> None:
    doc = global_doc()
    doc["plugins"].append(copy.deepcopy(doc["plugins"][0]))
    assert [e.path for e in errors_of(doc)] == ["plugins[1]"]
    # The extra plugin's own mistakes are reported in the same run.
    doc["plugins"][1]["config"]["targets"][0]["weight"] = 0
    assert [e.path for e in errors_of(doc)] == ["plugins[1]", "plugins[1].config.targets[0].weight"]


def test_plugin_with_a_dangling_reference_still_has_its_config_checked() -> None:
    doc = with_setting("targets[1].model.options.top_k", 40)
    doc["plugins"][0]["route"] = "ghost"
    assert [e.path for e in errors_of(doc)] == [
        "plugins[0].route",
        f"{P0}.targets[1].model.options.top_k",
    ]


def test_disabled_plugin_is_skipped() -> None:
    doc = global_doc()
    doc["plugins"].append({**copy.deepcopy(doc["plugins"][0]), "enabled": False})
    assert only_plan(compile_doc(doc)).balancer_id == "global"


def test_other_plugins_are_rejected_by_name() -> None:
    doc = global_doc()
    doc["plugins"].append({"name": "rate-limiting", "config": {"minute": 5}})
    [error] = errors_of(doc)
    assert error.path == "plugins[1].name"
    assert "'rate-limiting' is not supported yet" in error.message


# ------------------------------------------------------------------ ids and half-life


def target_ids(config: dict[str, Any]) -> list[str]:
    return [t.target_id for t in only_plan(compile_doc(global_doc(config))).targets]


def test_target_ids_survive_edits_that_do_not_change_the_upstream() -> None:
    before = target_ids(seed_config())
    config = seed_config()
    config["targets"][0]["model"]["options"]["temperature"] = 0.2
    config["targets"][0]["weight"] = 300
    config["targets"][1]["model"]["options"]["max_tokens"] = 64
    config["targets"][1]["auth"]["header_value"] = "Bearer rotated-key"
    assert target_ids(config) == before
    # And the same config compiled twice gives the same ids.
    assert target_ids(seed_config()) == before


def test_target_id_changes_with_model_name_or_upstream_url() -> None:
    before = target_ids(seed_config())
    renamed = seed_config()
    renamed["targets"][0]["model"]["name"] = "gpt-4.1"
    after = target_ids(renamed)
    assert after[0] != before[0]
    assert after[1] == before[1]

    moved = seed_config()
    moved["targets"][1]["model"]["options"]["upstream_url"] = "https://proxy.internal/v1/chat"
    after = target_ids(moved)
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_identical_targets_get_distinct_stable_ids() -> None:
    config = seed_config()
    config["targets"][1] = copy.deepcopy(config["targets"][0])
    config["targets"].append(copy.deepcopy(config["targets"][0]))
    ids = target_ids(config)
    assert len(set(ids)) == 3
    assert target_ids(config) == ids


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # Never the plugin's uuid: a plugin deleted and re-created keeps its usage.
        ({"id": "0d3b5a4e-1111-2222-3333-444455556666"}, "global"),
        ({"instance_name": "openai-lb"}, "openai-lb"),
        ({"id": "plugin-id", "instance_name": "openai-lb"}, "openai-lb"),
        ({}, "global"),
    ],
)
def test_balancer_id_is_instance_name_then_scope(entry: dict[str, str], expected: str) -> None:
    doc = global_doc()
    doc["plugins"][0].update(entry)
    plan = only_plan(compile_doc(doc))
    assert plan.balancer_id == expected
    # The Redis keys of the balancer are derived from the same id.
    assert expected in plan.keys.usage


def test_usage_half_life_defaults_to_60_seconds_and_can_be_set() -> None:
    assert only_plan(compile_doc(global_doc())).half_life_ms == 60_000
    custom = with_setting("balancer.usage_half_life", 2.5)
    assert only_plan(compile_doc(custom)).half_life_ms == 2_500


def test_kong_balancer_defaults_apply() -> None:
    plan = only_plan(compile_doc(global_doc(config_for("gpt-4o"))))
    assert plan.algorithm == "round-robin"
    assert plan.tokens_count_strategy == "total-tokens"
    assert plan.retries == 5
    assert plan.timeout.connect == plan.timeout.read == plan.timeout.write == 60.0
    assert plan.failover_criteria == {"error", "timeout"}
    assert plan.response_streaming == "allow"
    assert plan.targets[0].weight == 100


# --------------------------------------------------------------- all problems at once


def test_every_problem_in_the_file_is_reported_at_once() -> None:
    broken_schema = seed_config()
    broken_schema["targets"][0]["weight"] = 0
    broken_schema["targets"][1]["model"]["options"]["temperature"] = 6
    broken_schema["balancer"]["retries"] = -1
    broken_schema["balancer"]["algorithmm"] = "x"

    unsupported = seed_config()
    unsupported["balancer"] = {"algorithm": "semantic", "tokens_count_strategy": "cost"}
    unsupported["targets"][0]["auth"].pop("header_value")

    dangling = seed_config()
    dangling["targets"][1]["model"]["provider"] = "cohere"

    doc = {
        "_format_version": "3.0",
        "services": [{"name": "svc", "routes": [{"name": "r", "paths": ["/x"]}]}],
        "routes": [{"name": "lost", "paths": ["/y"], "service": "missing-service"}],
        "plugins": [
            {"name": "ai-proxy-advanced", "config": broken_schema},
            {"name": "ai-proxy-advanced", "service": "svc", "config": unsupported},
            {"name": "ai-proxy-advanced", "route": "missing-route", "config": dangling},
        ],
    }
    paths = {e.path for e in errors_of(doc)}
    p1 = "plugins[1].config"
    assert paths >= {
        "routes[0].service",
        "plugins[2].route",
        "plugins[2].config.targets[1].model.provider",
        f"{P0}.targets[0].weight",
        f"{P0}.targets[1].model.options.temperature",
        f"{P0}.balancer.retries",
        f"{P0}.balancer.algorithmm",
        f"{p1}.balancer.algorithm",
        f"{p1}.targets[0].auth",
        f"{p1}.targets[0].model.options.input_cost",
        f"{p1}.targets[1].model.options.output_cost",
        f"{p1}.targets[1].logging.log_statistics",
    }


def test_config_error_message_lists_every_error_with_its_path() -> None:
    doc = with_setting("targets[0].weight", 0)
    doc["plugins"][0]["config"]["targets"][1]["weight"] = 70000
    with pytest.raises(ConfigError) as info:
        compile_doc(doc)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{P0}.targets[0].weight: Expected `int` >= 1",
        f"{P0}.targets[1].weight: Expected `int` <= 65535",
    ]


def test_whole_value_placeholder_takes_its_yaml_type() -> None:
    """decK substitutes into the text, so a number from the environment is a number."""
    text = """
_format_version: "3.0"
plugins:
- name: ai-proxy-advanced
  config:
    balancer:
      algorithm: lowest-usage
      retries: ${{ env "DECK_RETRIES" }}
    targets:
    - route_type: llm/v1/chat
      model:
        provider: openai
        name: ${{ env "DECK_MODEL" }}
        options:
          max_tokens: ${{ env "DECK_MAX" }}
          temperature: ${{ env "DECK_TEMP" }}
"""
    environ = {"DECK_RETRIES": "2", "DECK_MODEL": "1234", "DECK_MAX": "512", "DECK_TEMP": "0.5"}
    with pytest.raises(ConfigError) as caught:
        compile_gateway(parse_document(text, environ))
    # A model named by digits becomes a number, which the schema then rejects by path,
    # exactly as a kong.yaml with the value written in would be.
    assert [e.path for e in caught.value.errors] == ["plugins[0].config.targets[0].model.name"]
    environ["DECK_MODEL"] = "gpt-4"
    plan = compile_gateway(parse_document(text, environ)).balancers[0]
    assert plan.retries == 2
    assert plan.targets[0].options.max_tokens == 512
    assert plan.targets[0].options.temperature == 0.5


def test_a_kong_yaml_with_only_consumers_is_read_as_one() -> None:
    doc = parse_document(
        "consumers:\n- username: alice\n  keyauth_credentials: [{key: k-alice-0001}]\n", {}
    )
    assert [c.username for c in doc.consumers] == ["alice"]


def test_a_yaml_error_says_where_without_quoting_the_line() -> None:
    """PyYAML quotes the offending line, which may hold a literal API key; the error
    (logged, and answered by the Admin API) gives the line and column instead."""
    text = "services:\n- name: a\n  routes: [\n  key: sk-literal-secret-0123 : oops\n"
    with pytest.raises(ConfigError) as caught:
        parse_document(text, {})
    message = str(caught.value)
    assert "sk-literal-secret" not in message
    assert "at line 4, column" in message
