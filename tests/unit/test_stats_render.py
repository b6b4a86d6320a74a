"""`tokenlb stats` tables: totals per target, and per minute when asked; each target's share
of what its balancer counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import pytest
from rich.console import Console

from tokenlb_proxy.keys import BalancerKeys, balancer_keys
from tokenlb_proxy.rollups import MinuteRollup, TargetRollup
from tokenlb_proxy.stats import balancer_stats, render_stats, share_basis, shares
from tokenlb_proxy.store.base import Algorithm, TargetTotals

ALGORITHMS: tuple[str, ...] = get_args(Algorithm)


def _balancer() -> dict[str, object]:
    busy = TargetRollup()
    for latency in (10.0, 20.0, 400.0):
        busy.add_request(
            failed=False, prompt_tokens=10, completion_tokens=30, cost=0.5, latency_ms=latency
        )
    minute = 29_713_000  # 2026-06-30 00:40 UTC
    return {
        "id": "demo",
        "algorithm": "lowest-usage",
        "tokens_count_strategy": "total-tokens",
        "share_of": "total_tokens",
        "usage_half_life_s": 60.0,
        "targets": [
            {
                "id": "t1",
                "model": "openai/gpt-4",
                "weight": 100,
                "usage": 120.0,
                "window": busy.as_dict(),
                "share": 1.0,
                "minutes": [{"minute": minute, **busy.as_dict()}],
            },
            {
                "id": "t2",
                "model": "openai/gpt-4o-mini",
                "weight": 100,
                "usage": 0.0,
                "window": TargetRollup().as_dict(),
                "share": 0.0,
                "minutes": [],
            },
        ],
    }


def test_totals_table_shows_every_target_and_shares() -> None:
    console = Console(record=True, width=200)
    render_stats(console, [_balancer()])
    text = console.export_text()
    assert "balancer demo: lowest-usage by total-tokens, half-life 60 s" in text
    assert "share of total tokens" in text
    row = next(line for line in text.splitlines() if "openai/gpt-4 " in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    # requests, errors, prompt, completion, total, cost, p50 and p95 (histogram bucket
    # bounds of 20 ms and 400 ms), usage now, share of the window's tokens.
    assert cells == [
        "openai/gpt-4",
        "3",
        "0",
        "30",
        "90",
        "120",
        "1.5000",
        "21",
        "431",
        "120.0",
        "100.0%",
    ]
    assert "per minute" not in text
    idle = next(line for line in text.splitlines() if "gpt-4o-mini" in line)
    assert " - " in idle  # no latency without requests


def test_per_minute_table_lists_each_minute() -> None:
    console = Console(record=True, width=200)
    render_stats(console, [_balancer()], per_minute=True)
    text = console.export_text()
    assert "balancer demo, per minute (UTC)" in text
    minute_rows = [line for line in text.splitlines() if "00:40" in line]
    assert len(minute_rows) == 1
    assert "openai/gpt-4" in minute_rows[0]
    assert "120" in minute_rows[0]


@pytest.mark.parametrize(
    ("algorithm", "strategy", "basis"),
    [
        ("lowest-usage", "prompt-tokens", "prompt_tokens"),
        ("lowest-usage", "completion-tokens", "completion_tokens"),
        ("lowest-usage", "total-tokens", "total_tokens"),
        ("lowest-usage", "cost", "cost"),
        *((a, "total-tokens", "requests") for a in ALGORITHMS if a != "lowest-usage"),
        (None, None, "total_tokens"),  # announced by a replica older than the field
    ],
)
def test_the_share_is_of_what_the_balancer_balances_on(
    algorithm: str | None, strategy: str | None, basis: str
) -> None:
    assert share_basis(algorithm, strategy) == basis


def test_shares_are_parts_of_the_sum_and_none_when_nothing_was_counted() -> None:
    assert shares([3.0, 1.0, 0.0]) == [0.75, 0.25, 0.0]
    assert shares([0.0, 0.0]) == [None, None]


class _Rollups:
    """A store holding one minute of counters: target a answered long completions,
    target b short ones, for the same prompts."""

    def __init__(self) -> None:
        a, b = TargetRollup(), TargetRollup()
        a.add_request(
            failed=False, prompt_tokens=500, completion_tokens=9500, cost=3.0, latency_ms=9
        )
        b.add_request(
            failed=False, prompt_tokens=500, completion_tokens=500, cost=1.0, latency_ms=9
        )
        b.add_request(failed=False, prompt_tokens=0, completion_tokens=0, cost=0.0, latency_ms=9)
        self.minute = MinuteRollup(minute=1, targets={"a": a, "b": b})

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        return [self.minute]

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        return {target_id: TargetTotals() for target_id in target_ids}


@pytest.mark.parametrize(
    ("algorithm", "strategy", "header", "a_share"),
    [
        # Even on prompt tokens, which the balancer counts, though 10,000 total tokens
        # against 1,000 would read as a 91/9 imbalance.
        ("lowest-usage", "prompt-tokens", "share of prompt tokens", "50.0%"),
        ("lowest-usage", "total-tokens", "share of total tokens", "90.9%"),
        ("lowest-usage", "completion-tokens", "share of completion tokens", "95.0%"),
        ("lowest-usage", "cost", "share of cost", "75.0%"),
        ("round-robin", "total-tokens", "share of requests", "33.3%"),
        ("least-connections", "total-tokens", "share of requests", "33.3%"),
    ],
)
async def test_each_target_shows_its_share_of_what_its_balancer_counts(
    algorithm: str, strategy: str, header: str, a_share: str
) -> None:
    store: Any = _Rollups()
    targets = {"a": {"model": "openai/a"}, "b": {"model": "openai/b"}}
    stats = await balancer_stats(
        store,
        "demo",
        balancer_keys("demo"),
        60_000,
        targets,
        [1],
        algorithm=algorithm,
        tokens_count_strategy=strategy,
    )
    assert sum(row["share"] for row in stats["targets"]) == pytest.approx(1.0)

    console = Console(record=True, width=200)
    render_stats(console, [stats])
    text = console.export_text()
    assert header in text
    row = next(line for line in text.splitlines() if "openai/a " in line)
    assert row.split("│")[-2].strip() == a_share
