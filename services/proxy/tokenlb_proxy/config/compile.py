"""Turning a decoded kong.yaml into a ``Gateway``: resolve references, scope plugins,
validate each ``ai-proxy-advanced`` config, and precompute everything per target.
"""

from __future__ import annotations

import hashlib
import re
from typing import cast

import httpx
import msgspec

from tokenlb_proxy.config.declarative import (
    DeclarativeConfig,
    EntityRef,
    PluginEntry,
    Route,
    Service,
)
from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.config.loader import schema_errors
from tokenlb_proxy.config.plugin import AiProxyAdvancedConfig, ModelOptions, Target
from tokenlb_proxy.config.support import NOT_SUPPORTED, check_plugin_config
from tokenlb_proxy.hashing import ConsistentHash
from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.plan import OPENAI_CHAT_URL, BalancerPlan, Gateway, RouteRule, UpstreamTarget
from tokenlb_proxy.store.base import Algorithm

__all__ = ["DEFAULT_CHAT_PATH", "compile_gateway"]

PLUGIN_NAME = "ai-proxy-advanced"
#: What a config without routes serves.
DEFAULT_CHAT_PATH = "/v1/chat/completions"

# A plugin's scope: (route key, service key); None is "any".
_Scope = tuple[str | None, str | None]


def compile_gateway(doc: DeclarativeConfig) -> Gateway:
    """Compile ``doc`` or raise ``ConfigError`` listing every problem."""
    errors: list[FieldError] = []
    services: dict[str, tuple[int, Service]] = {}
    for index, service in enumerate(doc.services):
        for ref in (service.id, service.name):
            if ref is not None:
                if ref in services:
                    errors.append(FieldError(f"services[{index}]", f"duplicate name or id {ref!r}"))
                services[ref] = (index, service)

    # (route, path, key of its service or None)
    routes: list[tuple[Route, str, str | None]] = []
    for s_index, service in enumerate(doc.services):
        for r_index, route in enumerate(service.routes):
            routes.append(
                (route, f"services[{s_index}].routes[{r_index}]", _service_key(service, s_index))
            )
    for r_index, route in enumerate(doc.routes):
        path = f"routes[{r_index}]"
        service_key = None
        if route.service is not None:
            found = services.get(_ref_value(route.service))
            if found is None:
                errors.append(
                    FieldError(f"{path}.service", f"no service {_ref_value(route.service)!r}")
                )
            else:
                service_key = _service_key(found[1], found[0])
        routes.append((route, path, service_key))

    route_keys: dict[str, str] = {}
    for index, (route, path, _) in enumerate(routes):
        key = _route_key(route, index)
        for ref in (route.id, route.name):
            if ref is not None:
                if ref in route_keys:
                    errors.append(FieldError(path, f"duplicate route name or id {ref!r}"))
                route_keys[ref] = key

    scoped: dict[_Scope, tuple[PluginEntry, str]] = {}

    def add_plugin(
        entry: PluginEntry, path: str, route_key: str | None, service_key: str | None
    ) -> None:
        if not entry.enabled:
            return
        if entry.name != PLUGIN_NAME:
            errors.append(FieldError(f"{path}.name", f"plugin {entry.name!r} is {NOT_SUPPORTED}"))
            return
        # A plugin that cannot be placed still has its config checked, so one run of
        # `tokenlb check` lists every problem, not just the scope or reference error.
        placeable = True
        for name in ("consumer", "consumer_group", "ordering"):
            if getattr(entry, name) is not None:
                errors.append(
                    FieldError(f"{path}.{name}", f"{NOT_SUPPORTED} (plugin scope {name})")
                )
                placeable = placeable and name == "ordering"
        if entry.route is not None:
            route_key = route_keys.get(_ref_value(entry.route))
            if route_key is None:
                errors.append(FieldError(f"{path}.route", f"no route {_ref_value(entry.route)!r}"))
                placeable = False
        if entry.service is not None:
            found = services.get(_ref_value(entry.service))
            if found is None:
                errors.append(
                    FieldError(f"{path}.service", f"no service {_ref_value(entry.service)!r}")
                )
                placeable = False
            else:
                service_key = _service_key(found[1], found[0])
        scope = (route_key, service_key)
        if placeable and scope in scoped:
            errors.append(
                FieldError(
                    path, f"a second {PLUGIN_NAME} plugin for the same scope as {scoped[scope][1]}"
                )
            )
            placeable = False
        if not placeable:
            _compile_plugin(entry, path, scope, errors)
            return
        scoped[scope] = (entry, path)

    for index, entry in enumerate(doc.plugins):
        add_plugin(entry, f"plugins[{index}]", None, None)
    for s_index, service in enumerate(doc.services):
        for p_index, entry in enumerate(service.plugins):
            add_plugin(
                entry,
                f"services[{s_index}].plugins[{p_index}]",
                None,
                _service_key(service, s_index),
            )
    for index, (route, path, _) in enumerate(routes):
        for p_index, entry in enumerate(route.plugins):
            add_plugin(entry, f"{path}.plugins[{p_index}]", _route_key(route, index), None)

    plans: dict[_Scope, BalancerPlan] = {}
    for scope, (entry, path) in scoped.items():
        plan = _compile_plugin(entry, path, scope, errors)
        if plan is not None:
            plans[scope] = plan

    rules: list[RouteRule] = []
    for index, (route, path, service_key) in enumerate(routes):
        rule = _compile_route(route, path, index, service_key, plans, errors)
        if rule is not None:
            rules.append(rule)
    if not routes:
        global_plan = plans.get((None, None))
        if global_plan is None and not errors:
            errors.append(
                FieldError(
                    "plugins", f"no routes and no global {PLUGIN_NAME} plugin: nothing to serve"
                )
            )
        rules.append(
            RouteRule(
                name="default",
                service=None,
                prefixes=(DEFAULT_CHAT_PATH,),
                regexes=(),
                methods=frozenset({"POST"}),
                hosts=frozenset(),
                wildcard_hosts=(),
                headers=(),
                regex_priority=0,
                plan=global_plan,
            )
        )
    if errors:
        raise ConfigError(errors)
    version = hashlib.sha256(msgspec.json.encode(doc)).hexdigest()[:12]
    return Gateway(routes=tuple(rules), balancers=tuple(plans.values()), version=version)


def _compile_plugin(
    entry: PluginEntry, path: str, scope: _Scope, errors: list[FieldError]
) -> BalancerPlan | None:
    cpath = f"{path}.config"
    try:
        config = msgspec.convert(entry.config, AiProxyAdvancedConfig)
    except msgspec.ValidationError:
        errors.extend(schema_errors(entry.config, AiProxyAdvancedConfig, cpath))
        return None
    problems = check_plugin_config(config, cpath)
    if problems:
        errors.extend(problems)
        return None
    balancer = config.balancer
    targets = _compile_targets(config.targets)
    by_model: dict[str, list[int]] = {}
    for target in targets:
        for name in target.names():
            by_model.setdefault(name, []).append(target.index)
    balancer_id = entry.id or entry.instance_name or _scope_name(scope)
    # check_plugin_config admitted only the algorithms the store implements.
    algorithm = cast(Algorithm, balancer.algorithm)
    return BalancerPlan(
        balancer_id=balancer_id,
        keys=balancer_keys(balancer_id),
        algorithm=algorithm,
        tokens_count_strategy=balancer.tokens_count_strategy,
        half_life_ms=max(1, round(balancer.usage_half_life * 1000)),
        retries=balancer.retries,
        timeout=httpx.Timeout(
            connect=balancer.connect_timeout / 1000,
            write=balancer.write_timeout / 1000,
            read=balancer.read_timeout / 1000,
            pool=balancer.connect_timeout / 1000,
        ),
        failover_criteria=frozenset(balancer.failover_criteria),
        response_streaming=config.response_streaming,
        max_request_body_size=config.max_request_body_size,
        model_name_header=config.model_name_header,
        targets=targets,
        by_model={name: tuple(indexes) for name, indexes in by_model.items()},
        max_fails=balancer.max_fails,
        fail_timeout_ms=balancer.fail_timeout,
        lease_ms=balancer.connect_timeout + balancer.write_timeout + balancer.read_timeout,
        hash_on_header=balancer.hash_on_header.lower(),
        latency_strategy=balancer.latency_strategy,
        hashing=(
            ConsistentHash([(t.target_id, t.weight) for t in targets], balancer.slots)
            if algorithm == "consistent-hashing"
            else None
        ),
    )


def _compile_targets(targets: tuple[Target, ...]) -> tuple[UpstreamTarget, ...]:
    compiled: list[UpstreamTarget] = []
    seen: dict[str, int] = {}
    # Kong's priority groups: equal weights form a group, the heaviest group first.
    tiers = {weight: tier for tier, weight in enumerate(sorted({t.weight for t in targets})[::-1])}
    for index, target in enumerate(targets):
        options = target.model.options or ModelOptions()
        url = options.upstream_url or OPENAI_CHAT_URL
        identity = f"{target.model.provider}|{target.model.name or ''}|{url}"
        target_id = hashlib.sha256(identity.encode()).hexdigest()[:12]
        # Two targets for the same model and URL (say, two API keys) stay apart by order.
        seen[target_id] = seen.get(target_id, 0) + 1
        if seen[target_id] > 1:
            target_id = f"{target_id}-{seen[target_id]}"
        auth, limits = target.auth, target.limits
        headers: tuple[tuple[str, str], ...] = ()
        query: tuple[tuple[str, str], ...] = ()
        body: tuple[tuple[str, str], ...] = ()
        if auth is not None:
            if auth.header_name and auth.header_value is not None:
                headers = ((auth.header_name.lower(), auth.header_value),)
            if auth.param_name and auth.param_value is not None:
                pair = ((auth.param_name, auth.param_value),)
                if auth.param_location == "query":
                    query = pair
                else:
                    body = pair
        compiled.append(
            UpstreamTarget(
                index=index,
                target_id=target_id,
                provider=target.model.provider,
                model_name=target.model.name,
                model_alias=target.model.model_alias,
                url=url,
                weight=target.weight,
                options=options,
                auth_headers=headers,
                auth_query=query,
                auth_body=body,
                allow_override=auth.allow_override if auth is not None else False,
                input_cost=options.input_cost,
                output_cost=options.output_cost,
                log_statistics=target.logging.log_statistics,
                log_payloads=target.logging.log_payloads,
                priority_tier=tiers[target.weight],
                tokens_per_minute=(limits.tokens_per_minute or 0) if limits else 0,
                requests_per_minute=(limits.requests_per_minute or 0) if limits else 0,
            )
        )
    return tuple(compiled)


def _compile_route(
    route: Route,
    path: str,
    index: int,
    service_key: str | None,
    plans: dict[_Scope, BalancerPlan],
    errors: list[FieldError],
) -> RouteRule | None:
    if not (route.paths or route.hosts or route.methods or route.headers):
        errors.append(FieldError(path, "must set at least one of paths, hosts, methods, headers"))
        return None
    prefixes: list[str] = []
    regexes: list[re.Pattern[str]] = []
    for p_index, route_path in enumerate(route.paths or ()):
        if route_path.startswith("~"):
            try:
                regexes.append(re.compile(route_path[1:]))
            except re.error as exc:
                errors.append(FieldError(f"{path}.paths[{p_index}]", f"invalid regex: {exc}"))
        elif route_path.startswith("/"):
            prefixes.append(route_path)
        else:
            errors.append(
                FieldError(f"{path}.paths[{p_index}]", "must start with / (or ~ for a regex)")
            )
    hosts: set[str] = set()
    wildcards: list[tuple[str, str]] = []
    for host in (h.lower() for h in route.hosts or ()):
        if host.startswith("*."):
            wildcards.append(("suffix", host[1:]))
        elif host.endswith(".*"):
            wildcards.append(("prefix", host[:-1]))
        else:
            hosts.add(host)
    route_key = _route_key(route, index)
    plan = (
        plans.get((route_key, service_key))
        or plans.get((route_key, None))
        or (plans.get((None, service_key)) if service_key else None)
        or plans.get((None, None))
    )
    return RouteRule(
        name=route.name or route.id or f"route#{index}",
        service=service_key,
        prefixes=tuple(prefixes),
        regexes=tuple(regexes),
        methods=frozenset(m.upper() for m in route.methods or ()),
        hosts=frozenset(hosts),
        wildcard_hosts=tuple(wildcards),
        headers=tuple(
            (name.lower(), frozenset(v.lower() for v in values))
            for name, values in (route.headers or {}).items()
        ),
        regex_priority=route.regex_priority,
        plan=plan,
    )


def _ref_value(ref: EntityRef) -> str:
    if isinstance(ref, str):
        return ref
    return ref.get("id") or ref.get("name") or ""


def _service_key(service: Service, index: int) -> str:
    return service.name or service.id or f"service#{index}"


def _route_key(route: Route, index: int) -> str:
    return route.name or route.id or f"route#{index}"


def _scope_name(scope: _Scope) -> str:
    route_key, service_key = scope
    parts = [
        f"route:{route_key}" if route_key else "",
        f"service:{service_key}" if service_key else "",
    ]
    return "+".join(p for p in parts if p) or "global"
