"""What tokenlb implements of ``ai-proxy-advanced``, and Kong's own cross-field rules.

Kong's schema accepts far more than one gateway release implements. A field tokenlb does
not implement yet is rejected when it holds anything but Kong's default, so nobody runs a
config believing a setting works when it is ignored.
"""

from __future__ import annotations

from typing import get_args

from tokenlb_proxy.config.errors import FieldError
from tokenlb_proxy.config.plugin import (
    AiProxyAdvancedConfig,
    Auth,
    ModelOptions,
    Target,
)
from tokenlb_proxy.store.base import Algorithm

__all__ = ["SUPPORTED_ALGORITHMS", "check_plugin_config"]

#: The algorithms the stores implement, in Kong's spelling.
SUPPORTED_ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
SUPPORTED_STRATEGIES = ("total-tokens", "prompt-tokens", "completion-tokens", "cost")
NOT_SUPPORTED = "not supported yet"

_DEFAULT_OPTIONS = ModelOptions()
_DEFAULT_AUTH = Auth()
_UNSUPPORTED_OPTION_FIELDS = (
    "top_k",
    "upstream_path",
    "anthropic_version",
    "azure_instance",
    "azure_api_version",
    "azure_deployment_id",
    "llama2_format",
    "mistral_format",
    "embeddings_dimensions",
    "gemini",
    "bedrock",
    "huggingface",
    "cohere",
    "dashscope",
    "databricks",
)
_UNSUPPORTED_AUTH_FIELDS = (
    "azure_use_managed_identity",
    "azure_client_id",
    "azure_client_secret",
    "azure_tenant_id",
    "gcp_use_service_account",
    "gcp_service_account_json",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_assume_role_arn",
    "aws_role_session_name",
    "aws_sts_endpoint_url",
)


def check_plugin_config(config: AiProxyAdvancedConfig, path: str) -> list[FieldError]:
    """Every unsupported setting and every broken Kong rule in one plugin's config."""
    errors: list[FieldError] = []
    balancer = config.balancer
    bpath = f"{path}.balancer"
    if balancer.algorithm not in SUPPORTED_ALGORITHMS:
        errors.append(
            FieldError(
                f"{bpath}.algorithm",
                f"{balancer.algorithm!r} is {NOT_SUPPORTED} "
                f"(supported: {', '.join(SUPPORTED_ALGORITHMS)})",
            )
        )
    if balancer.tokens_count_strategy not in SUPPORTED_STRATEGIES:
        errors.append(
            FieldError(
                f"{bpath}.tokens_count_strategy",
                f"{balancer.tokens_count_strategy!r} is {NOT_SUPPORTED} "
                f"(supported: {', '.join(SUPPORTED_STRATEGIES)})",
            )
        )
    if config.llm_format != "openai":
        errors.append(FieldError(f"{path}.llm_format", f"{config.llm_format!r} is {NOT_SUPPORTED}"))
    if config.genai_category != "text/generation":
        errors.append(
            FieldError(f"{path}.genai_category", f"{config.genai_category!r} is {NOT_SUPPORTED}")
        )
    for name in ("embeddings", "vectordb"):
        if getattr(config, name) is not None:
            errors.append(
                FieldError(
                    f"{path}.{name}", f"{NOT_SUPPORTED} (only the semantic algorithm uses it)"
                )
            )
    for index, target in enumerate(config.targets):
        errors += _check_target(target, f"{path}.targets[{index}]")
    if balancer.tokens_count_strategy == "cost":
        errors += _check_cost_requirements(config, path)
    return errors


def _check_target(target: Target, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if target.route_type != "llm/v1/chat":
        errors.append(
            FieldError(
                f"{path}.route_type",
                f"{target.route_type!r} is {NOT_SUPPORTED} (supported: llm/v1/chat)",
            )
        )
    if target.model.provider != "openai":
        errors.append(
            FieldError(
                f"{path}.model.provider",
                f"{target.model.provider!r} is {NOT_SUPPORTED} (supported: openai and "
                "OpenAI-compatible upstreams through model.options.upstream_url)",
            )
        )
    if target.model.options is not None:
        errors += _non_default(
            target.model.options,
            _DEFAULT_OPTIONS,
            _UNSUPPORTED_OPTION_FIELDS,
            f"{path}.model.options",
        )
        url = target.model.options.upstream_url
        if url is not None and not url.startswith(("http://", "https://")):
            errors.append(
                FieldError(f"{path}.model.options.upstream_url", "must be an http(s) URL")
            )
    auth = target.auth
    if auth is not None:
        apath = f"{path}.auth"
        errors += _non_default(auth, _DEFAULT_AUTH, _UNSUPPORTED_AUTH_FIELDS, apath)
        if (auth.header_name is None) != (auth.header_value is None):
            errors.append(FieldError(apath, "header_name and header_value must be set together"))
        param_fields = (auth.param_name, auth.param_value, auth.param_location)
        if any(v is not None for v in param_fields) and any(v is None for v in param_fields):
            errors.append(
                FieldError(apath, "param_name, param_value and param_location must be set together")
            )
    return errors


def _check_cost_requirements(config: AiProxyAdvancedConfig, path: str) -> list[FieldError]:
    """Kong: the cost strategy needs both prices on every target, and log_statistics."""
    errors: list[FieldError] = []
    for index, target in enumerate(config.targets):
        tpath = f"{path}.targets[{index}]"
        options = target.model.options or _DEFAULT_OPTIONS
        for price in ("input_cost", "output_cost"):
            if getattr(options, price) is None:
                errors.append(
                    FieldError(
                        f"{tpath}.model.options.{price}",
                        "required when balancer.tokens_count_strategy is 'cost'",
                    )
                )
        if not target.logging.log_statistics:
            errors.append(
                FieldError(
                    f"{tpath}.logging.log_statistics",
                    "must be true when balancer.tokens_count_strategy is 'cost'",
                )
            )
    return errors


def _non_default(
    value: object, default: object, fields: tuple[str, ...], path: str
) -> list[FieldError]:
    return [
        FieldError(f"{path}.{name}", NOT_SUPPORTED)
        for name in fields
        if getattr(value, name) != getattr(default, name)
    ]
