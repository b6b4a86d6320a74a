"""Per-target statistics over a window of minutes: ``tokenlb stats`` and ``GET /stats``.

Counters come from the per-minute rollups (written by the aggregators, or in memory on
the embedded store); ``usage`` is each target's decayed usage at this instant, read from
the balancer state itself, so it is right whether or not an aggregator runs.

A target's ``share`` is its part of what its balancer balances on (``share_basis``), so
that an even balance reads as even: a ``prompt-tokens`` balancer that splits prompt
tokens 50/50 may well split total tokens 94/6, and showing the latter made a balanced
fleet look broken.
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

__all__ = [
    "balancer_stats",
    "format_share",
    "render_stats",
    "share_basis",
    "share_header",
    "shares",
    "window_minutes",
]

#: The window counter each ``tokens_count_strategy`` of a lowest-usage balancer counts.
_COUNTED = {
    "prompt-tokens": "prompt_tokens",
    "completion-tokens": "completion_tokens",
    "total-tokens": "total_tokens",
    "cost": "cost",
}


def share_basis(algorithm: str | None, tokens_count_strategy: str | None) -> str:
    """The window counter (``requests``, ``prompt_tokens``, ``cost``, ...) a target's share
    is taken of: what its balancer evens out.

    ``lowest-usage`` evens out its ``tokens_count_strategy``'s quantity. The others
    hand out requests: ``round-robin``, ``priority`` and ``consistent-hashing`` by weight
    (or key), ``least-connections`` by requests in flight, ``lowest-latency`` to the
    fastest; tokens are not what they balance, so their share is of requests. A balancer
    announced without its algorithm (by an older replica) is shown by total tokens.
    """
    if algorithm is None:
        return "total_tokens"
    if algorithm == "lowest-usage":
        return _COUNTED.get(tokens_count_strategy or "total-tokens", "total_tokens")
    return "requests"


def shares(values: Sequence[float]) -> list[float | None]:
    """Each value's part (0..1) of their sum; None for each when nothing was counted."""
    total = sum(values)
    return [value / total if total else None for value in values]


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
    *,
    algorithm: str | None,
    tokens_count_strategy: str | None,
) -> dict[str, Any]:
    """One balancer's targets: totals over ``minutes``, per-minute rows, usage now, and
    each target's share of what the balancer balances on (``share_basis``; None when
    the window counted none of it)."""
    rollups = await store.rollups(keys, minutes)
    totals = merge_rollups(rollups)
    usage = await store.totals(keys, half_life_ms, list(targets))
    # When `usage` was true: it keeps decaying, so readers comparing two reports need it.
    measured_at_ms = time.time() * 1000
    basis = share_basis(algorithm, tokens_count_strategy)
    counted = {target_id: totals.get(target_id, TargetRollup()) for target_id in targets}
    parts = shares([float(getattr(rollup, basis)) for rollup in counted.values()])
    rows = []
    for (target_id, description), share in zip(targets.items(), parts, strict=True):
        rows.append(
            {
                "id": target_id,
                "model": description.get("model"),
                "weight": description.get("weight"),
                "usage": usage[target_id].usage,
                "window": counted[target_id].as_dict(),
                "share": share,
                "minutes": [
                    {"minute": r.minute, **r.targets[target_id].as_dict()}
                    for r in rollups
                    if target_id in r.targets
                ],
            }
        )
    return {
        "id": balancer_id,
        "algorithm": algorithm,
        "tokens_count_strategy": tokens_count_strategy,
        "share_of": basis,
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
        table = Table(title=_title(balancer))
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
            share_header(balancer["share_of"]),
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
                format_share(row["share"]),
            )
        console.print(table)


def share_header(basis: str) -> str:
    """The share column's header, naming what the share is of ("share of prompt tokens")."""
    return f"share of {basis.replace('_', ' ')}"


def format_share(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _title(balancer: Mapping[str, Any]) -> str:
    """``balancer demo: lowest-usage by prompt-tokens (half-life 60 s)``."""
    algorithm = balancer.get("algorithm")
    if algorithm == "lowest-usage":
        algorithm = f"lowest-usage by {balancer.get('tokens_count_strategy')}"
    how = f"{algorithm}, " if algorithm else ""
    return f"balancer {balancer['id']}: {how}half-life {balancer['usage_half_life_s']:g} s"


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
