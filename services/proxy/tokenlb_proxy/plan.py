"""The compiled, ready-to-serve form of a config: routes, balancers, targets.

Everything a request needs is computed once when the config loads (upstream URL, auth
headers, target ids, timeouts, Redis keys), so the hot path only reads attributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from tokenlb_proxy.hashing import ConsistentHash
from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.store.base import Algorithm

if TYPE_CHECKING:
    # Annotation only: importing the config package here would be circular
    # (config.compile imports this module), breaking `import tokenlb_proxy.plan`.
    from tokenlb_proxy.config.plugin import ModelOptions

__all__ = [
    "BalancerPlan",
    "ConsumerIdentity",
    "Credential",
    "Gateway",
    "KeyAuthPlan",
    "RouteRule",
    "UpstreamTarget",
]

OPENAI_CHAT_URL = "https://api.openai.com/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One target of a balancer, with everything needed to call it."""

    index: int
    #: Stable identity (provider, model name, upstream URL): usage survives harmless edits.
    target_id: str
    provider: str
    #: ``model.name``; None means the client's model is passed through.
    model_name: str | None
    model_alias: str | None
    url: str
    weight: int
    options: ModelOptions
    auth_headers: tuple[tuple[str, str], ...]
    auth_query: tuple[tuple[str, str], ...]
    auth_body: tuple[tuple[str, str], ...]
    allow_override: bool
    input_cost: float | None
    output_cost: float | None
    log_statistics: bool
    log_payloads: bool
    #: priority: the rank of this target's weight among the distinct weights, heaviest 0.
    priority_tier: int = 0
    #: ``limits`` (tokenlb extension): budgets per sliding minute, 0 for none.
    tokens_per_minute: int = 0
    requests_per_minute: int = 0

    @property
    def budgeted(self) -> bool:
        return bool(self.tokens_per_minute or self.requests_per_minute)

    def __repr__(self) -> str:
        # Auth values are secrets: never part of a repr that may reach a log.
        return f"UpstreamTarget({self.label!r}, id={self.target_id!r}, url={self.url!r})"

    @property
    def label(self) -> str:
        """``provider/model`` as Kong's ``X-Kong-LLM-Model`` header shows it."""
        return f"{self.provider}/{self.model_name or '*'}"

    def names(self) -> tuple[str, ...]:
        """The model names a client may use to ask for this target."""
        return tuple(n for n in (self.model_name, self.model_alias) if n)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Kong's formula: (prompt·input_cost + completion·output_cost) / 1e6; 0 unpriced."""
        if self.input_cost is None or self.output_cost is None:
            return 0.0
        return (prompt_tokens * self.input_cost + completion_tokens * self.output_cost) / 1e6


@dataclass(frozen=True, slots=True)
class BalancerPlan:
    """One ``ai-proxy-advanced`` plugin instance, compiled."""

    balancer_id: str
    keys: BalancerKeys
    algorithm: Algorithm
    tokens_count_strategy: str
    half_life_ms: int
    retries: int
    timeout: httpx.Timeout
    failover_criteria: frozenset[str]
    response_streaming: str
    max_request_body_size: int
    model_name_header: bool
    targets: tuple[UpstreamTarget, ...]
    #: model name or alias -> indexes of the targets that serve it.
    by_model: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Circuit breaker: failures within ``fail_timeout_ms`` that take a target out of
    #: rotation for ``fail_timeout_ms`` (0: off).
    max_fails: int = 0
    fail_timeout_ms: int = 10_000
    #: least-connections: an in-flight lease outlives a dead replica by at most this long
    #: (connect + write + read timeout: the longest a non-streamed attempt can take).
    lease_ms: int = 180_000
    #: consistent-hashing: the request header hashed (lower case), and the hashing.
    hash_on_header: str = "x-kong-llm-request-id"
    #: lowest-latency: "tpot" (ms per output token) or "e2e" (ms per request).
    latency_strategy: str = "tpot"
    hashing: ConsistentHash | None = None


@dataclass(frozen=True, slots=True)
class ConsumerIdentity:
    """A consumer, as the request path needs it once a key identified it."""

    #: How plugin scopes name it (username, else id); keys ``RouteRule.consumer_plans``.
    key: str
    id: str | None
    username: str | None
    custom_id: str | None
    #: Names of its consumer groups, sorted: with plugins on two groups the first name wins.
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """A key-auth credential: the key (a secret) and whom it identifies."""

    key: bytes
    consumer: ConsumerIdentity
    #: Kong's ``X-Consumer-*`` / ``X-Credential-Identifier`` headers for the upstream call.
    upstream_headers: tuple[tuple[str, str], ...]
    #: ``time.time()`` from which the key no longer identifies anyone (its ``ttl``
    #: counted from ``created_at``); None: it does not expire.
    expires_at: float | None = None

    def __repr__(self) -> str:
        # The key never reaches a log through a repr.
        return f"Credential(consumer={self.consumer.key!r})"


@dataclass(frozen=True, slots=True)
class KeyAuthPlan:
    """One ``key-auth`` plugin instance, compiled."""

    #: ``key_names`` as configured (query parameters are case-sensitive) and lower-cased
    #: (header names are not).
    key_names: tuple[str, ...]
    header_names: tuple[str, ...]
    in_header: bool
    in_query: bool
    hide_credentials: bool
    run_on_preflight: bool
    #: The ``WWW-Authenticate`` value of a 401.
    challenge: str
    #: Who a request whose authentication failed is served as (None: it gets a 401).
    anonymous: ConsumerIdentity | None
    anonymous_headers: tuple[tuple[str, str], ...]
    #: sha256(key) -> credential, shared by every key-auth plugin of the config. The digest
    #: finds the credential without comparing keys byte by byte; the key is then checked
    #: with ``hmac.compare_digest``.
    credentials: Mapping[bytes, Credential] = field(repr=False)


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A route, ready to match requests, with the plugins that apply to it."""

    name: str
    service: str | None
    prefixes: tuple[str, ...]
    regexes: tuple[re.Pattern[str], ...]
    methods: frozenset[str]
    hosts: frozenset[str]
    wildcard_hosts: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, frozenset[str]], ...]
    regex_priority: int
    #: The ai-proxy-advanced plugin when no consumer is identified (route+service, route,
    #: service or global scope, in Kong's order).
    plan: BalancerPlan | None
    #: Consumer key -> the plugin serving that consumer here, for the consumers a consumer
    #: or consumer-group scoped plugin beats ``plan`` for (Kong's precedence, resolved when
    #: the config loads). Empty when the config has no such plugin: then a request pays one
    #: failed dict lookup at most.
    consumer_plans: Mapping[str, BalancerPlan] = field(default_factory=dict)
    #: The key-auth plugin that applies (route+service, route, service, global), if any.
    key_auth: KeyAuthPlan | None = None

    def plan_for(self, consumer: ConsumerIdentity | None) -> BalancerPlan | None:
        """The ai-proxy-advanced plugin serving ``consumer`` (None: nobody identified)."""
        if consumer is None:
            return self.plan
        return self.consumer_plans.get(consumer.key, self.plan)


@dataclass(frozen=True, slots=True)
class Gateway:
    """A whole compiled config."""

    routes: tuple[RouteRule, ...]
    balancers: tuple[BalancerPlan, ...]
    #: Short hash of the config, shown in /status so operators can see replicas agree.
    version: str
