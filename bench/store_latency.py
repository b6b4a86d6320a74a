"""Time one selection (EVALSHA select_lowest_usage) and one settlement (EVALSHA
record_usage) against a private redis-server, next to the in-process store.

    python bench/store_latency.py [--calls 20000] [--targets 2] [--concurrency 32]

Prints client-observed latency percentiles per call (sequential, one connection) and
Redis's own CPU time per script call (INFO commandstats), plus concurrent throughput.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

from tokenlb_proxy.keys import BalancerKeys, balancer_keys
from tokenlb_proxy.store import Candidate, LocalStore, RedisStore, Settlement, UsageStore
from tokenlb_proxy.store.redis import connect_redis

HALF_LIFE_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _sequential(
    store: UsageStore, calls: int, targets: int
) -> tuple[list[float], list[float]]:
    keys = balancer_keys("bench")
    candidates = [Candidate(f"target-{i}", 100, 250.0, True) for i in range(targets)]
    select_times: list[float] = []
    settle_times: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        chosen = await _select_and_settle(store, keys, candidates)
        settled = time.perf_counter()
        select_times.append(chosen - started)
        settle_times.append(settled - chosen)
    return select_times, settle_times


async def _select_and_settle(
    store: UsageStore, keys: BalancerKeys, candidates: list[Candidate]
) -> float:
    """One request's two store calls, as the proxy makes them; returns when the first ended
    (``time.perf_counter()``), so callers can time the selection alone."""
    selection = await store.select(keys, "lowest-usage", HALF_LIFE_MS, candidates)
    chosen = time.perf_counter()
    assert selection.index is not None
    await store.settle(
        keys,
        HALF_LIFE_MS,
        Settlement(
            candidates[selection.index].target_id,
            250.0,
            selection.reserved_at_ms,
            240.0,
            100,
            140,
            0.0,
            False,
            selection.backend,
        ),
    )
    return chosen


async def _concurrent(store: UsageStore, calls: int, targets: int, concurrency: int) -> float:
    keys = balancer_keys("bench-concurrent")
    candidates = [Candidate(f"target-{i}", 100, 250.0, True) for i in range(targets)]
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await _select_and_settle(store, keys, candidates)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started)


def _summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)

    def pick(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] * 1e6

    return {
        "p50_us": pick(0.50),
        "p95_us": pick(0.95),
        "p99_us": pick(0.99),
        "mean_us": statistics.fmean(samples) * 1e6,
    }


def _evalsha_usec(stats: dict[str, Any]) -> tuple[int, float]:
    evalsha = stats.get("cmdstat_evalsha", {})
    return int(evalsha.get("calls", 0)), float(evalsha.get("usec", 0))


async def measure(calls: int, targets: int, concurrency: int) -> dict[str, Any]:
    """Everything this module reports, as numbers (``bench/run.py`` puts them in its table).

    Redis CPU is read from INFO commandstats, which times each script call inside the
    server, nested commands included: once for select+settle pairs, once for selections
    alone, so the settle's share is the difference.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    with (
        tempfile.TemporaryDirectory() as workdir,
        subprocess.Popen(  # noqa: ASYNC220 - started once, before any timing
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
        ) as server,
    ):
        try:
            client = connect_redis(f"redis://127.0.0.1:{port}/0")
            for _ in range(100):
                if await RedisStore(client).healthy():
                    break
                await asyncio.sleep(0.05)
            redis_store = RedisStore(client)
            local_store = LocalStore()
            await _sequential(redis_store, 500, targets)  # warm up, load scripts
            await client.config_resetstat()
            select_r, settle_r = await _sequential(redis_store, calls, targets)
            pair_calls, pair_usec = _evalsha_usec(await client.info("commandstats"))
            await client.config_resetstat()
            keys = balancer_keys("bench-select-only")
            candidates = [Candidate(f"target-{i}", 100, 250.0, True) for i in range(targets)]
            for _ in range(calls):
                await redis_store.select(keys, "lowest-usage", HALF_LIFE_MS, candidates)
            select_calls, select_usec = _evalsha_usec(await client.info("commandstats"))
            select_l, settle_l = await _sequential(local_store, calls, targets)
            rate_r = await _concurrent(redis_store, calls, targets, concurrency)
            rate_l = await _concurrent(local_store, calls, targets, concurrency)
            await redis_store.close()
        finally:
            server.terminate()
    pairs = max(1, pair_calls // 2)
    select_cpu = select_usec / max(1, select_calls)
    return {
        "calls": calls,
        "targets": targets,
        "concurrency": concurrency,
        "redis_select": _summary(select_r),
        "redis_settle": _summary(settle_r),
        "local_select": _summary(select_l),
        "local_settle": _summary(settle_l),
        "redis_cpu_us_per_request": pair_usec / pairs,
        "redis_cpu_us_select": select_cpu,
        "redis_cpu_us_settle": pair_usec / pairs - select_cpu,
        "round_trips_per_request": pair_calls / pairs,
        "pairs_per_s_redis": rate_r,
        "pairs_per_s_local": rate_l,
    }


async def main(args: argparse.Namespace) -> None:
    numbers = await measure(args.calls, args.targets, args.concurrency)

    def line(name: str) -> str:
        s = numbers[name]
        return (
            f"p50 {s['p50_us']:7.1f} µs  p95 {s['p95_us']:7.1f} µs  "
            f"p99 {s['p99_us']:7.1f} µs  mean {s['mean_us']:7.1f} µs"
        )

    print(f"{args.calls} sequential calls, {args.targets} targets, one connection")
    for name in ("redis_select", "redis_settle", "local_select", "local_settle"):
        print(f"{name.replace('_', ' '):13} {line(name)}")
    print(
        f"redis server CPU per request (select + settle): "
        f"{numbers['redis_cpu_us_per_request']:.2f} µs "
        f"(select {numbers['redis_cpu_us_select']:.2f}, "
        f"settle {numbers['redis_cpu_us_settle']:.2f}; "
        f"{numbers['round_trips_per_request']:.0f} round trips)"
    )
    print(
        f"concurrent select+settle pairs/s ({args.concurrency} coroutines, one process): "
        f"redis {numbers['pairs_per_s_redis']:,.0f}, local {numbers['pairs_per_s_local']:,.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
