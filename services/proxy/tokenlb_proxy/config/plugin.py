"""The ``ai-proxy-advanced`` plugin schema, field for field as Kong publishes it.

Every field Kong's schema has is declared here with Kong's default, so a config pasted from
Kong's docs decodes unchanged; fields Kong does not have are rejected by msgspec as unknown.
Fields tokenlb does not implement yet are declared too, and ``support.py`` rejects any
non-default value for them with a "not supported yet" error naming the field: nothing is
ignored silently. tokenlb's extensions: ``balancer.usage_half_life`` and
``targets[].limits`` (fleet-wide budgets per target).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "AiProxyAdvancedConfig",
    "Auth",
    "BalancerConfig",
    "Logging",
    "Model",
    "ModelOptions",
    "Target",
    "TargetLimits",
]

Algorithm = Literal[
    "round-robin",
    "lowest-latency",
    "lowest-usage",
    "consistent-hashing",
    "semantic",
    "priority",
    "least-connections",
]
TokensCountStrategy = Literal[
    "total-tokens", "prompt-tokens", "completion-tokens", "cost", "llm-accuracy"
]
FailoverCriterion = Literal[
    "error",
    "timeout",
    "invalid_header",
    "http_403",
    "http_404",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "non_idempotent",
]
RouteType = Literal[
    "llm/v1/chat",
    "llm/v1/completions",
    "llm/v1/embeddings",
    "llm/v1/responses",
    "llm/v1/assistants",
    "llm/v1/files",
    "llm/v1/batches",
    "audio/v1/audio/speech",
    "audio/v1/audio/transcriptions",
    "audio/v1/audio/translations",
    "image/v1/images/generations",
    "image/v1/images/edits",
    "realtime/v1/realtime",
    "video/v1/videos/generations",
    "preserve",
]
Provider = Literal[
    "openai",
    "azure",
    "anthropic",
    "cohere",
    "mistral",
    "llama2",
    "gemini",
    "bedrock",
    "huggingface",
    "ollama",
    "vllm",
    "deepseek",
    "xai",
    "databricks",
    "dashscope",
    "cerebras",
]
Timeout = Annotated[int, Meta(ge=1, le=2147483646)]
#: Decay half-life of usage in seconds (tokenlb extension; Kong decays with a fixed 10 s
#: time constant per worker). 60 s matches the per-minute quotas providers enforce.
DEFAULT_USAGE_HALF_LIFE_S = 60.0


class BalancerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``config.balancer``: how a target is chosen and when to fail over."""

    algorithm: Algorithm = "round-robin"
    tokens_count_strategy: TokensCountStrategy = "total-tokens"
    latency_strategy: Literal["tpot", "e2e"] = "tpot"
    hash_on_header: str = "X-Kong-LLM-Request-ID"
    slots: Annotated[int, Meta(ge=10, le=65536)] = 10000
    retries: Annotated[int, Meta(ge=0, le=32767)] = 5
    connect_timeout: Timeout = 60000
    write_timeout: Timeout = 60000
    read_timeout: Timeout = 60000
    failover_criteria: tuple[FailoverCriterion, ...] = ("error", "timeout")
    max_fails: Annotated[int, Meta(ge=0, le=32767)] = 0
    fail_timeout: Annotated[int, Meta(ge=1, le=2147483646)] = 10000
    usage_half_life: Annotated[float, Meta(gt=0, le=86400)] = DEFAULT_USAGE_HALF_LIFE_S


class ModelOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``targets[].model.options``: request defaults, prices and provider details."""

    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=5)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0, le=500)] | None = None
    input_cost: Annotated[float, Meta(gt=0)] | None = None
    output_cost: Annotated[float, Meta(gt=0)] | None = None
    upstream_url: str | None = None
    upstream_path: str | None = None
    anthropic_version: str | None = None
    azure_instance: str | None = None
    azure_api_version: str | None = "2023-05-15"
    azure_deployment_id: str | None = None
    llama2_format: str | None = None
    mistral_format: str | None = None
    embeddings_dimensions: int | None = None
    gemini: dict[str, Any] | None = None
    bedrock: dict[str, Any] | None = None
    huggingface: dict[str, Any] | None = None
    cohere: dict[str, Any] | None = None
    dashscope: dict[str, Any] | None = None
    databricks: dict[str, Any] | None = None


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``targets[].model``: which model, at which provider."""

    provider: Provider
    name: str | None = None
    model_alias: str | None = None
    options: ModelOptions | None = None


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``targets[].auth``: the credential tokenlb adds to the upstream request."""

    header_name: str | None = None
    header_value: str | None = None
    param_name: str | None = None
    param_value: str | None = None
    param_location: Literal["query", "body"] | None = None
    allow_override: bool = False
    azure_use_managed_identity: bool = False
    azure_client_id: str | None = None
    azure_client_secret: str | None = None
    azure_tenant_id: str | None = None
    gcp_use_service_account: bool = False
    gcp_service_account_json: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_assume_role_arn: str | None = None
    aws_role_session_name: str | None = None
    aws_sts_endpoint_url: str | None = None

    def __repr__(self) -> str:
        # Credentials must never reach logs through a repr.
        return "Auth(<redacted>)"


class Logging(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``targets[].logging``."""

    log_statistics: bool = False
    log_payloads: bool = False


class TargetLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``targets[].limits`` (tokenlb extension): a budget per sliding minute, held for the
    whole fleet. A target a request would take over it is skipped."""

    tokens_per_minute: Annotated[int, Meta(ge=1)] | None = None
    requests_per_minute: Annotated[int, Meta(ge=1)] | None = None


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``config.targets[]``: one model deployment the balancer may choose."""

    model: Model
    route_type: RouteType
    weight: Annotated[int, Meta(ge=1, le=65535)] = 100
    description: str | None = None
    auth: Auth | None = None
    logging: Logging = msgspec.field(default_factory=Logging)
    #: Kong 3.13: "for internal use only"; carried, never interpreted.
    metadata: dict[str, Any] | None = None
    #: tokenlb extension: fleet-wide budgets.
    limits: TargetLimits | None = None


class AiProxyAdvancedConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The plugin's ``config`` object."""

    targets: Annotated[tuple[Target, ...], Meta(min_length=1)]
    balancer: BalancerConfig = msgspec.field(default_factory=BalancerConfig)
    response_streaming: Literal["allow", "deny", "always"] = "allow"
    max_request_body_size: Annotated[int, Meta(ge=0)] = 1048576
    model_name_header: bool = True
    llm_format: Literal["openai", "bedrock", "gemini", "cohere", "huggingface", "anthropic"] = (
        "openai"
    )
    genai_category: str = "text/generation"
    embeddings: dict[str, Any] | None = None
    vectordb: dict[str, Any] | None = None
