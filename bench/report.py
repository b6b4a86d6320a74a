"""Turn ``bench/run.py`` results into the Markdown summary and the latency plot.

Added latency is a system's percentile minus the direct path's at the same offered rate
in the same run, so the generator's and the mock's own time cancel out; that is also why
every ratio here is taken side by side, never against numbers from another run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot", "targets"]

KIND_TITLES = {"plain": "non-streaming", "stream": "streaming"}
SUT_PROCESSES = ("tokenlb", "litellm", "haproxy")


def _step_at(sweep: dict[str, Any], rate: float) -> dict[str, Any] | None:
    for step in sweep["steps"]:
        if math.isclose(step["offered_rps"], rate):
            return step
    return None


def added_latency(results: dict[str, Any], system: str, kind: str, rate: float) -> dict[str, float]:
    """p50/p95/p99 of ``system`` minus the direct path's, at ``rate`` (nan when missing)."""
    nan = float("nan")
    empty = {"p50": nan, "p95": nan, "p99": nan}
    systems = results["systems"]
    if system not in systems or "direct" not in systems:
        return empty
    mine = _step_at(systems[system][kind], rate)
    floor = _step_at(systems["direct"][kind], rate)
    if mine is None or floor is None or not mine["ok"]:
        return empty
    return {q: mine["latency_ms"][q] - floor["latency_ms"][q] for q in ("p50", "p95", "p99")}


def sut_cpu_per_1k(step: dict[str, Any] | None) -> float:
    """CPU seconds per 1000 requests of the system under test (all its processes)."""
    if step is None:
        return float("nan")
    return sum(v for k, v in step["cpu_s_per_1k"].items() if k.startswith(SUT_PROCESSES))


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 7's targets: (target, measured, met); met is None when it could not be measured."""
    rows: list[tuple[str, str, bool | None]] = []
    rate = results["criteria"]["target_rate"]
    added = added_latency(results, "tokenlb-1", "plain", rate)
    measured = f"p50 +{added['p50']:.2f} ms, p99 +{added['p99']:.2f} ms"
    ok = None if math.isnan(added["p50"]) else added["p50"] <= 1.0 and added["p99"] <= 5.0
    rows.append((f"added latency at {rate:g} RPS, 1 replica: p50 ≤ 1 ms, p99 ≤ 5 ms", measured, ok))
    systems = results["systems"]
    if "tokenlb-1" in systems and "litellm-1" in systems:
        ours = systems["tokenlb-1"]["plain"]["max_sustainable_rps"] or 0
        theirs = systems["litellm-1"]["plain"]["max_sustainable_rps"] or 0
        ratio = ours / theirs if theirs else float("inf")
        rows.append(
            (
                "max sustainable RPS ≥ 5× LiteLLM's",
                f"{ours:g} vs {theirs:g} RPS ({ratio:.1f}×)",
                ratio >= 5,
            )
        )
        cpu_rate = results["criteria"]["cpu_rate"]
        ours_cpu = sut_cpu_per_1k(_step_at(systems["tokenlb-1"]["plain"], cpu_rate))
        theirs_cpu = sut_cpu_per_1k(_step_at(systems["litellm-1"]["plain"], cpu_rate))
        cpu_ratio = theirs_cpu / ours_cpu if ours_cpu else float("nan")
        rows.append(
            (
                f"CPU per request ≤ 1/5 of LiteLLM's (at {cpu_rate:g} RPS)",
                f"{ours_cpu:.3f} vs {theirs_cpu:.3f} CPU-s/1k req (1/{cpu_ratio:.1f})",
                None if math.isnan(cpu_ratio) else cpu_ratio >= 5,
            )
        )
    else:
        rows.append(("≥ 5× LiteLLM's max RPS, ≤ 1/5 of its CPU", "LiteLLM not measured", None))
    balance = results.get("balance", {})
    if "tokenlb-2" in balance:
        ours_b = balance["tokenlb-2"]["imbalance"]
        text = f"tokenlb {ours_b:.2%}"
        met = ours_b <= 0.02
        if "litellm-2" in balance:
            theirs_b = balance["litellm-2"]["imbalance"]
            text += f", LiteLLM {theirs_b:.2%}"
            met = met and theirs_b > ours_b
        rows.append(("fleet imbalance ≤ 2% where LiteLLM's is worse", text, met))
    store = results.get("store")
    one = systems.get("tokenlb-1", {}).get("plain")
    if store is not None:
        trips = store["round_trips_per_request"]
        if one is not None:
            step = _step_at(one, rate)
            if step is not None:
                trips = step["redis_per_request"]["round_trips"]
        cpu = store["redis_cpu_us_per_request"]
        live = ""
        if one is not None:
            step = _step_at(one, rate)
            if step is not None:
                live = f", {step['redis_per_request']['server_usec']:.1f} µs under load"
        rows.append(
            (
                "Redis per request: ≤ 2 round trips, ≤ 50 µs CPU",
                f"{trips:.2f} round trips, {cpu:.1f} µs in scripts (micro-benchmark){live}",
                trips <= 2.01 and cpu <= 50,
            )
        )
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _triple(values: dict[str, float]) -> str:
    return " / ".join(_fmt(values[q]) for q in ("p50", "p95", "p99"))


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    crit = results["criteria"]
    m = results["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    pinning = ""
    if results["pinned"]:
        pinning = (
            "System under test and the direct path's mock pinned to CPU 1, load generator + "
            "mock + Redis to CPU 0. "
        )
        hop = results.get("round_trip_us")
        if hop:
            pinning += (
                f"One loopback round trip between idle processes: {hop['same_core_us']:g} µs "
                f"on one core, {hop['cross_core_us']:g} µs across the two (`hops.py`). "
            )
    lines.append(f"# tokenlb benchmark ({results['mode']}, {results['started']})")
    lines.append("")
    lines.append(
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at start {load}. {pinning}"
        f"Steps of {crit['duration_s']:g} s after {crit['warmup_s']:g} s warm-up; sustainable = "
        f"p99 < {crit['p99_limit_ms']:g} ms, ≤ {crit['max_failed_share']:.1%} failed, "
        f"≥ {crit['min_kept_up']:.0%} of the offered rate completed."
    )
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    if results.get("litellm_missing"):
        lines.append("")
        lines.append(f"LiteLLM not measured: {results['litellm_missing']}")
    lines.append("")
    lines.append("## Targets (issue 7)")
    lines.append("")
    lines.append("| target | measured | met |")
    lines.append("|---|---|---|")
    for name, measured, met in targets(results):
        lines.append(
            f"| {name} | {measured} | {'–' if met is None else ('yes' if met else 'no')} |"
        )
    rate = crit["target_rate"]
    cpu_rate = crit["cpu_rate"]
    for kind in ("plain", "stream"):
        present = [s for s, r in results["systems"].items() if kind in r]
        if not present:
            continue
        lines.append("")
        lines.append(f"## {KIND_TITLES[kind].capitalize()}")
        lines.append("")
        lines.append(
            f"| system | max RPS (p99 < {crit['p99_limit_ms']:g} ms) | p50 / p95 / p99 at "
            f"{rate:g} RPS (ms) | added p50 / p95 / p99 (ms) | CPU-s per 1k req at "
            f"{cpu_rate:g} RPS (system; mock; Redis) | Redis per req: round trips / "
            "µs in commands / process CPU µs | peak RSS (MB) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for system in present:
            sweep = results["systems"][system][kind]
            step = _step_at(sweep, rate)
            cpu_step = _step_at(sweep, cpu_rate)
            lat = step["latency_ms"] if step else None
            added = added_latency(results, system, kind, rate)
            if cpu_step is not None:
                per = cpu_step["cpu_s_per_1k"]
                cpu = (
                    f"{_fmt(sut_cpu_per_1k(cpu_step), 3)}; {_fmt(per['mock'], 3)}; "
                    f"{_fmt(per['redis'], 3)}"
                )
                rr = cpu_step["redis_per_request"]
                redis_cell = (
                    f"{_fmt(rr['round_trips'], 1)} / {_fmt(rr['server_usec'], 1)} / "
                    f"{_fmt(rr['process_cpu_usec'], 0)}"
                )
            else:
                cpu, redis_cell = "–", "–"
            rss = results["systems"][system].get("peak_rss_mb", {})
            rss_cell = " + ".join(f"{v:.0f}" for v in rss.values()) or "–"
            best = sweep["max_sustainable_rps"]
            best_cell = _fmt(best, 0) if best else f"< {sweep['steps'][0]['offered_rps']:g}"
            lat_cell = _triple(lat) if lat else "–"
            if step is not None and not step["sustainable"]:
                lat_cell += " (saturated)"
            added_cell = "–" if system == "direct" else _triple(added)
            lines.append(
                f"| {system} | {best_cell} | {lat_cell} | {added_cell} | {cpu} | {redis_cell} "
                f"| {rss_cell} |"
            )
    balance = results.get("balance")
    if balance:
        lines.append("")
        lines.append("## Balance: two replicas behind HAProxy, same load")
        lines.append("")
        lines.append(
            "| balancer | rate × duration | requests ok | total tokens per target | "
            "requests per target | imbalance |"
        )
        lines.append("|---|---|---|---|---|---|")
        for name, b in balance.items():
            tokens = " / ".join(f"{v:,}" for v in b["total_tokens"].values())
            requests = " / ".join(str(v) for v in b["requests"].values())
            lines.append(
                f"| {name} | {b['rate']:g}/s × {b['duration_s']:g} s | {b['ok']} | {tokens} | "
                f"{requests} | {b['imbalance']:.2%} |"
            )
    store = results.get("store")
    if store:
        lines.append("")
        lines.append("## Store scripts alone (bench/store_latency.py)")
        lines.append("")
        lines.append("| call | p50 µs | p99 µs | mean µs |")
        lines.append("|---|---|---|---|")
        for name in ("redis_select", "redis_settle", "local_select", "local_settle"):
            s = store[name]
            label = name.replace("_", " ")
            lines.append(
                f"| {label} | {s['p50_us']:.1f} | {s['p99_us']:.1f} | {s['mean_us']:.1f} |"
            )
        lines.append("")
        lines.append(
            f"Redis CPU inside the scripts per request: {store['redis_cpu_us_per_request']:.1f} µs "
            f"(select {store['redis_cpu_us_select']:.1f}, "
            f"settle {store['redis_cpu_us_settle']:.1f}), "
            f"{store['round_trips_per_request']:.0f} round trips; concurrent select+settle pairs/s "
            f"from one process: Redis {store['pairs_per_s_redis']:,.0f}, local "
            f"{store['pairs_per_s_local']:,.0f}."
        )
    lines.append("")
    lines.append(f"Run took {results.get('elapsed_s', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """p50 and p99 latency vs offered load, one panel per request kind, log-log."""
    import matplotlib  # noqa: PLC0415 - only the bench venv has it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    kinds = [k for k in ("plain", "stream") if any(k in r for r in results["systems"].values())]
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 5), squeeze=False)
    colors = {
        "direct": "black",
        "tokenlb-1": "tab:blue",
        "tokenlb-2": "tab:green",
        "litellm-1": "tab:red",
    }
    spare = iter(("tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"))
    for system in results["systems"]:
        colors.setdefault(system, next(spare, "tab:gray"))
    for ax, kind in zip(axes[0], kinds, strict=True):
        for system, data in results["systems"].items():
            if kind not in data:
                continue
            steps = [s for s in data[kind]["steps"] if s["ok"]]
            x = [s["offered_rps"] for s in steps]
            color = colors[system]
            ax.plot(
                x,
                [s["latency_ms"]["p50"] for s in steps],
                "-o",
                color=color,
                ms=3,
                label=f"{system} p50",
            )
            ax.plot(
                x,
                [s["latency_ms"]["p99"] for s in steps],
                "--s",
                color=color,
                ms=3,
                label=f"{system} p99",
            )
        ax.axhline(results["criteria"]["p99_limit_ms"], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s, open loop)")
        ax.set_ylabel("latency from scheduled send (ms)")
        ax.set_title(f"{KIND_TITLES[kind]} ({results['mode']} run, {results['started']})")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
