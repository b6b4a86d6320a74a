"""`tokenlb stats` tables: totals per target, and per minute when asked."""

from __future__ import annotations

from rich.console import Console

from tokenlb_proxy.rollups import TargetRollup
from tokenlb_proxy.stats import render_stats


def _balancer() -> dict[str, object]:
    busy = TargetRollup()
    for latency in (10.0, 20.0, 400.0):
        busy.add_request(
            failed=False, prompt_tokens=10, completion_tokens=30, cost=0.5, latency_ms=latency
        )
    minute = 29_713_000  # 2026-06-30 00:40 UTC
    return {
        "id": "demo",
        "usage_half_life_s": 60.0,
        "targets": [
            {
                "id": "t1",
                "model": "openai/gpt-4",
                "weight": 100,
                "usage": 120.0,
                "window": busy.as_dict(),
                "minutes": [{"minute": minute, **busy.as_dict()}],
            },
            {
                "id": "t2",
                "model": "openai/gpt-4o-mini",
                "weight": 100,
                "usage": 0.0,
                "window": TargetRollup().as_dict(),
                "minutes": [],
            },
        ],
    }


def test_totals_table_shows_every_target_and_shares() -> None:
    console = Console(record=True, width=200)
    render_stats(console, [_balancer()])
    text = console.export_text()
    assert "balancer demo (half-life 60 s)" in text
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
