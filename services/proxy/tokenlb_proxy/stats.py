"""Per-target statistics over a window of minutes: ``tokenlb stats`` and ``GET /stats``.

Counters come from the per-minute rollups (written by the aggregators, or in memory on
the embedded store); ``usage`` is each target's decayed usage at this instant, read from
the balancer state itself, so it is right whether or not an aggregator runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.rollups import TargetRollup, merge_rollups
from tokenlb_proxy.store.base import UsageStore

__all__ = ["balancer_stats", "render_stats", "window_minutes"]


def window_minutes(minutes: int, now_s: float | None = None) -> list[int]:
    """The last ``minutes`` minute numbers (Unix seconds // 60), oldest first."""
    current = int((time.time() if now_s is None else now_s) // 60)
    return list(range(current - minutes + 1, current + 1))


async def balancer_stats(
    store: UsageStore,
    balancer_id: str,
    keys: BalancerKeys,
    half_life_ms: int,
    targets: Mapping[str, Mapping[str, Any]],
    minutes: Sequence[int],
) -> dict[str, Any]:
    """One balancer's targets: totals over ``minutes``, per-minute rows, usage now."""
    rollups = await store.rollups(keys, minutes)
    totals = merge_rollups(rollups)
    usage = await store.totals(keys, half_life_ms, list(targets))
    # When `usage` was true: it keeps decaying, so readers comparing two reports need it.
    measured_at_ms = time.time() * 1000
    rows = []
    for target_id, description in targets.items():
        counted = totals.get(target_id, TargetRollup())
        rows.append(
            {
                "id": target_id,
                "model": description.get("model"),
                "weight": description.get("weight"),
                "usage": usage[target_id].usage,
                "window": counted.as_dict(),
                "minutes": [
                    {"minute": r.minute, **r.targets[target_id].as_dict()}
                    for r in rollups
                    if target_id in r.targets
                ],
            }
        )
    return {
        "id": balancer_id,
        "usage_half_life_s": half_life_ms / 1000,
        "usage_measured_at_ms": measured_at_ms,
        "window_minutes": [minutes[0], minutes[-1]] if minutes else [],
        "targets": rows,
    }


def render_stats(
    console: Console, balancers: Sequence[Mapping[str, Any]], *, per_minute: bool = False
) -> None:
    """Rich tables: one per balancer, a row per target, totals over the window; with
    ``per_minute`` also a row per target and minute."""
    for balancer in balancers:
        if per_minute:
            _render_minutes(console, balancer)
        rows = balancer["targets"]
        grand_tokens = sum(r["window"]["total_tokens"] for r in rows) or 1
        table = Table(
            title=f"balancer {balancer['id']} (half-life {balancer['usage_half_life_s']:g} s)"
        )
        for column in (
            "target",
            "requests",
            "errors",
            "prompt",
            "completion",
            "total",
            "cost",
            "p50 ms",
            "p95 ms",
            "usage now",
            "share",
        ):
            table.add_column(column, justify="left" if column == "target" else "right")
        for row in rows:
            w = row["window"]
            table.add_row(
                str(row["model"]),
                str(w["requests"]),
                str(w["errors"]),
                str(w["prompt_tokens"]),
                str(w["completion_tokens"]),
                str(w["total_tokens"]),
                f"{w['cost']:.4f}",
                _ms(w["latency_p50_ms"]),
                _ms(w["latency_p95_ms"]),
                f"{row['usage']:.1f}",
                f"{100 * w['total_tokens'] / grand_tokens:.1f}%",
            )
        console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _render_minutes(console: Console, balancer: Mapping[str, Any]) -> None:
    table = Table(title=f"balancer {balancer['id']}, per minute (UTC)")
    for column in ("minute", "target", "requests", "errors", "total", "cost", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column in ("minute", "target") else "right")
    rows = [
        (minute["minute"], target["model"], minute)
        for target in balancer["targets"]
        for minute in target["minutes"]
    ]
    for number, model, minute in sorted(rows, key=lambda row: (row[0], str(row[1]))):
        table.add_row(
            time.strftime("%H:%M", time.gmtime(number * 60)),
            str(model),
            str(minute["requests"]),
            str(minute["errors"]),
            str(minute["total_tokens"]),
            f"{minute['cost']:.4f}",
            _ms(minute["latency_p50_ms"]),
            _ms(minute["latency_p95_ms"]),
        )
    console.print(table)
