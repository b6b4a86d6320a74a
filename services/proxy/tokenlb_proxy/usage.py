"""Counting a request: the estimate reserved before it runs, the actual after.

``tokens_count_strategy`` decides what is counted: prompt, completion or total tokens,
or cost = (prompt·input_cost + completion·output_cost) / 1e6 (Kong's formula).
"""

from __future__ import annotations

from typing import Any

import msgspec

from tokenlb_proxy.chat import ChatRequest
from tokenlb_proxy.plan import UpstreamTarget
from tokenlb_proxy.tokens import get_counter

__all__ = [
    "DEFAULT_COMPLETION_ESTIMATE",
    "CompletionView",
    "TokenUsage",
    "counted",
    "estimate_budget_tokens",
    "estimate_completion_tokens",
    "estimate_prompt_tokens",
    "read_completion",
    "usage_from_body",
]

#: Completion tokens assumed for a request that sets no max_tokens. The reservation only
#: has to be in the right range: the upstream's reported usage replaces it.
DEFAULT_COMPLETION_ESTIMATE = 256


class TokenUsage(msgspec.Struct, frozen=True):
    """OpenAI's ``usage`` object (only the fields tokenlb counts)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None


class CompletionView(msgspec.Struct):
    """What tokenlb reads of a completion: its usage and the model that answered."""

    usage: TokenUsage | None = None
    model: str | None = None


_usage_decoder = msgspec.json.Decoder(CompletionView)


def usage_from_body(body: bytes) -> tuple[TokenUsage | None, str | None]:
    """The ``usage`` and ``model`` of a completion or chunk; (None, None) when unreadable."""
    view = read_completion(body)
    if view is None:
        return None, None
    return view.usage, view.model


def read_completion(body: bytes) -> CompletionView | None:
    """The usage-bearing view of a completion body; None when it is not one at all."""
    try:
        return _usage_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Prompt tokens of the request's messages: tiktoken on the first 2,000 characters,
    extrapolated beyond, so a long prompt costs no more than a short one to estimate."""
    return get_counter().estimate_messages(request.messages)


def estimate_completion_tokens(request: ChatRequest, target: UpstreamTarget) -> int:
    """Completion tokens to reserve: the request's cap, else the target's, capped."""
    cap = request.max_completion_tokens or request.max_tokens or target.options.max_tokens
    choices = request.n or 1
    if cap is None:
        return DEFAULT_COMPLETION_ESTIMATE * choices
    return min(cap, DEFAULT_COMPLETION_ESTIMATE) * choices


def estimate_budget_tokens(request: ChatRequest, target: UpstreamTarget, prompt: int) -> int:
    """Tokens a budget reservation holds: the prompt plus the most the request may
    generate (its cap, else the target's, uncapped), so that the reservation is an upper
    bound and the budget holds exactly; without any cap, the default estimate (the
    settle then corrects it to what was used)."""
    cap = request.max_completion_tokens or request.max_tokens or target.options.max_tokens
    completion = cap if cap is not None else DEFAULT_COMPLETION_ESTIMATE
    return prompt + completion * (request.n or 1)


def counted(
    strategy: str, target: UpstreamTarget, prompt_tokens: int, completion_tokens: int
) -> float:
    """The quantity ``strategy`` balances on, for one request on ``target``."""
    if strategy == "prompt-tokens":
        return float(prompt_tokens)
    if strategy == "completion-tokens":
        return float(completion_tokens)
    if strategy == "cost":
        return target.cost(prompt_tokens, completion_tokens)
    return float(prompt_tokens + completion_tokens)


def completion_text_tokens(chunks: list[Any]) -> int:
    """Tokens of streamed content deltas, the last resort when a stream reports no usage."""
    counter = get_counter()
    return sum(counter.count_text(text) for text in chunks)
