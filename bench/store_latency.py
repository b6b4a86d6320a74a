"""Time one selection (EVALSHA select_lowest_usage) and one settlement (EVALSHA
record_usage) against a private redis-server, next to the in-process store.

    python bench/store_latency.py [--calls 20000] [--targets 2] [--concurrency 32]

Prints client-observed latency percentiles per call (sequential, one connection) and
Redis's own CPU time per script call (INFO commandstats), plus pipelined throughput.
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

from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.store import Candidate, LocalStore, RedisStore, Settlement, UsageStore
from tokenlb_proxy.store.redis import connect_redis

HALF_LIFE_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _percentiles(samples: list[float]) -> str:
    samples.sort()

    def pick(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    return (
        f"p50 {pick(0.50) * 1e6:7.1f} µs  p95 {pick(0.95) * 1e6:7.1f} µs  "
        f"p99 {pick(0.99) * 1e6:7.1f} µs  mean {statistics.fmean(samples) * 1e6:7.1f} µs"
    )


async def _sequential(
    store: UsageStore, calls: int, targets: int
) -> tuple[list[float], list[float]]:
    keys = balancer_keys("bench")
    candidates = [Candidate(f"target-{i}", 100, 250.0, True) for i in range(targets)]
    select_times: list[float] = []
    settle_times: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
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
        settled = time.perf_counter()
        select_times.append(chosen - started)
        settle_times.append(settled - chosen)
    return select_times, settle_times


async def _concurrent(store: UsageStore, calls: int, targets: int, concurrency: int) -> float:
    keys = balancer_keys("bench-concurrent")
    candidates = [Candidate(f"target-{i}", 100, 250.0, True) for i in range(targets)]
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            selection = await store.select(keys, "lowest-usage", HALF_LIFE_MS, candidates)
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

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
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
            await _sequential(redis_store, 500, args.targets)  # warm up, load scripts
            await client.config_resetstat()
            select_r, settle_r = await _sequential(redis_store, args.calls, args.targets)
            stats = await client.info("commandstats")
            select_l, settle_l = await _sequential(local_store, args.calls, args.targets)
            rate_r = await _concurrent(redis_store, args.calls, args.targets, args.concurrency)
            rate_l = await _concurrent(local_store, args.calls, args.targets, args.concurrency)
            await redis_store.close()
        finally:
            server.terminate()
    evalsha = stats.get("cmdstat_evalsha", {})
    print(f"{args.calls} sequential calls, {args.targets} targets, one connection")
    print(f"redis select  {_percentiles(select_r)}")
    print(f"redis settle  {_percentiles(settle_r)}")
    print(f"local select  {_percentiles(select_l)}")
    print(f"local settle  {_percentiles(settle_l)}")
    print(
        f"redis server CPU per script call: {evalsha.get('usec_per_call', 0):.2f} µs "
        f"({evalsha.get('calls', 0)} EVALSHA calls)"
    )
    print(
        f"concurrent select+settle pairs/s ({args.concurrency} coroutines, one process): "
        f"redis {rate_r:,.0f}, local {rate_l:,.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
