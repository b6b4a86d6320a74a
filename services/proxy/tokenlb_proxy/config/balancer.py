"""An ``ai-proxy-advanced`` plugin entry compiled into a ``BalancerPlan``: its config
validated, every target precomputed (URL, auth, stable id, priority tier), its Redis keys.
"""

from __future__ import annotations

import hashlib
from typing import cast

import httpx

from tokenlb_proxy.config.declarative import PluginEntry
from tokenlb_proxy.config.errors import FieldError
from tokenlb_proxy.config.loader import decode
from tokenlb_proxy.config.plugin import AiProxyAdvancedConfig, ModelOptions, Target
from tokenlb_proxy.config.scopes import Scope, scope_name
from tokenlb_proxy.config.secrets import SecretResolver
from tokenlb_proxy.config.support import check_plugin_config
from tokenlb_proxy.hashing import ConsistentHash
from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.plan import OPENAI_CHAT_URL, BalancerPlan, UpstreamTarget
from tokenlb_proxy.store.base import Algorithm

__all__ = ["compile_balancer"]


def compile_balancer(
    entry: PluginEntry,
    path: str,
    scope: Scope,
    secrets: SecretResolver,
    errors: list[FieldError],
) -> BalancerPlan | None:
    """The plugin at ``path`` as a balancer, or None after adding its problems to ``errors``."""
    cpath = f"{path}.config"
    config = decode(
        secrets.resolve(entry.config, cpath, errors), AiProxyAdvancedConfig, cpath, errors
    )
    if config is None:
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
    # Never the plugin's uuid: a plugin re-created with the same scope or instance name
    # keeps its balancer's state (usage, breaker) in Redis.
    balancer_id = entry.instance_name or scope_name(scope)
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
