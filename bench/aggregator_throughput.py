"""How many usage events one aggregator applies per second, and what emitting an event
costs a proxy's settle call, side by side in one run.

    python bench/aggregator_throughput.py [--events 50000] [--settles 10000]

Starts a private redis-server on 127.0.0.1, fills one balancer's stream with real events
(through RedisStore.settle, as proxies do), then times one in-process Aggregator draining
it (rollups + XACK in Lua, Kong log lines to nowhere, no span export). Separately times
RedisStore.settle with and without the event and reads Redis's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenlb_aggregator import Aggregator
from tokenlb_aggregator.settings import aggregator_settings
from tokenlb_aggregator.sink import LogSink
from tokenlb_aggregator.spans import SpanEmitter
from tokenlb_proxy.events import UsageEvent
from tokenlb_proxy.keys import balancer_keys
from tokenlb_proxy.store import RedisStore, Settlement
from tokenlb_proxy.store.redis import connect_redis

HALF_LIFE_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _event(i: int) -> UsageEvent:
    now = time.time() * 1000
    return UsageEvent(
        balancer="bench",
        target=f"target-{i % 2}",
        target_label=f"openai/model-{i % 2}",
        provider="openai",
        request_model="any",
        response_model=f"model-{i % 2}",
        algorithm="lowest-usage",
        strategy="total-tokens",
        score=123.4,
        status=200,
        start_ms=now - 40,
        end_ms=now,
        upstream_ms=38.5,
        prompt_tokens=100 + i % 50,
        completion_tokens=200,
        cost=0.0012,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        request_span_id="00f067aa0ba902b8",
        request_start_ms=now - 41,
        log_statistics=True,
    )


def _settlement(i: int, event: UsageEvent | None) -> Settlement:
    return Settlement(
        target_id=f"target-{i % 2}",
        reserved=300.0,
        reserved_at_ms=int(time.time() * 1000),
        actual=300.0,
        prompt_tokens=100,
        completion_tokens=200,
        cost=0.0012,
        failed=False,
        backend="redis",
        event=event,
    )


async def _settle_cost(store: RedisStore, count: int, with_event: bool) -> tuple[float, float]:
    """(µs per settle seen by the client, µs of Redis CPU per settle)."""
    keys = balancer_keys("bench-settle")
    await store.client.config_resetstat()
    started = time.perf_counter()
    for i in range(count):
        await store.settle(keys, HALF_LIFE_MS, _settlement(i, _event(i) if with_event else None))
    elapsed = time.perf_counter() - started
    stats = await store.client.info("commandstats")
    redis_usec = float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))
    return elapsed / count * 1e6, redis_usec


async def _drain(url: str, events: int, with_spans: bool) -> float:
    """Events per second one aggregator applies from a stream holding ``events``."""
    settings = aggregator_settings(redis_url=url, name=f"bench-{with_spans}", log_sink="none")
    spans = SpanEmitter(InMemorySpanExporter()) if with_spans else None
    aggregator = Aggregator(settings, sink=LogSink("none"), spans=spans)
    started = time.perf_counter()
    applied = 0
    while applied < events:
        applied += await aggregator.run_once()
    if spans is not None:
        spans.flush()
    elapsed = time.perf_counter() - started
    await aggregator.close()
    return events / elapsed


async def main(args: argparse.Namespace) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
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
            store = RedisStore(connect_redis(url, timeout_s=5.0), stream_max_len=10**7)
            for _ in range(100):
                if await store.healthy():
                    break
                await asyncio.sleep(0.05)
            # Side by side, alternating to cancel out drift on a noisy machine.
            results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(3):
                for with_event in (False, True):
                    results[with_event].append(
                        await _settle_cost(store, args.settles // 3, with_event)
                    )
            rates = {}
            for with_spans in (False, True):
                balancer = f"bench-{with_spans}"
                keys = balancer_keys(balancer)
                await store.register(balancer, keys, {"target-0": "{}", "target-1": "{}"})
                for i in range(args.events):
                    await store.settle(keys, HALF_LIFE_MS, _settlement(i, _event(i)))
                rates[with_spans] = await _drain(url, args.events, with_spans)
            await store.close()
        finally:
            server.terminate()
    for with_event in (False, True):
        runs = results[with_event]
        client = min(r[0] for r in runs)
        redis_cpu = min(r[1] for r in runs)
        label = "settle with event   " if with_event else "settle without event"
        print(f"{label}: {client:6.1f} µs per call (client), {redis_cpu:5.1f} µs Redis CPU")
    for with_spans, rate in rates.items():
        what = "building spans (in-memory exporter)" if with_spans else "rollups and logs only"
        print(f"one aggregator, {what}: {rate:,.0f} events/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--settles", type=int, default=9_000)
    asyncio.run(main(parser.parse_args()))
