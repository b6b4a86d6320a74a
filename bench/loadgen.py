"""Open-loop HTTP/1.1 load generator: a fixed arrival rate, latency from the scheduled time.

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions \\
        --bodies bodies.jsonl --rate 500 --duration 10 [--warmup 2] [--out result.json]

A closed-loop client (wrk, ab, a pool of workers each waiting for its answer) slows down
when the server does, so a stalled server is sampled less and its latency looks better
than users see it ("coordinated omission"). Here request ``i`` is due at
``t0 + i / rate`` whatever happened before, and its latency runs from that due time to
the last byte of the answer: time spent waiting for a free connection or for this
process to catch up is charged to the server under test, as a user would feel it.

It speaks raw HTTP/1.1 over keep-alive connections with ``httptools`` (the C parser
uvicorn uses) on uvloop, because a generator built on a full client library spends more
CPU per request than the proxy it measures; on this 2-core machine that would hide the
proxy's ceiling behind the generator's. ``lag_p99_ms`` reports how late this process
itself sent requests, so a run where the generator (not the server) fell behind is visible.

Output is one JSON object: counts, latency percentiles (ms) of the requests due after the
warm-up, time to first byte for streams, achieved throughput and the generator's lag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

#: A request not answered within this many seconds counts as an error.
REQUEST_TIMEOUT_S = 10.0
#: Upper bound on open connections; past it, due requests queue (and their wait counts).
DEFAULT_MAX_CONNECTIONS = 512


@dataclass(slots=True)
class Sample:
    """One finished request, times from ``time.perf_counter``."""

    due: float
    sent: float
    first_byte: float
    done: float
    status: int
    body_bytes: int


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: asyncio.Future[tuple[int, float, int, bool]] | None = None
        self.first_byte = 0.0
        self.body_bytes = 0
        self.keep_alive = True
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.first_byte:
            self.first_byte = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(
                (
                    self.parser.get_status_code(),
                    self.first_byte,
                    self.body_bytes,
                    self.parser.should_keep_alive(),
                )
            )

    def _fail(self, exc: BaseException) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc)

    def request(self, payload: bytes) -> asyncio.Future[tuple[int, float, int, bool]]:
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.first_byte = 0.0
        self.body_bytes = 0
        self.transport.write(payload)
        return self.reply


@dataclass
class _Pool:
    host: str
    port: int
    max_connections: int
    idle: list[_Connection] = field(default_factory=list)
    opened: int = 0
    waiters: deque[asyncio.Future[_Connection | None]] = field(default_factory=deque)

    async def acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.opened -= 1
        if self.opened < self.max_connections:
            self.opened += 1
            try:
                _, protocol = await asyncio.get_running_loop().create_connection(
                    _Connection, self.host, self.port
                )
            except OSError:
                self.opened -= 1
                raise
            return protocol
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        handed = await waiter
        return handed if handed is not None else await self.acquire()

    def release(self, conn: _Connection, reusable: bool) -> None:
        """Hand ``conn`` to the oldest waiter, or keep it idle; close it when spent."""
        handed: _Connection | None = conn
        if not reusable or conn.closed:
            if conn.transport is not None:
                conn.transport.close()
            self.opened -= 1
            handed = None  # a waiter then opens a fresh connection
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return
        if handed is not None:
            self.idle.append(handed)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


def build_requests(url: str, bodies: Sequence[bytes], headers: dict[str, str]) -> list[bytes]:
    """Wire bytes of one POST per body, ready to write."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return [
        (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"{head}content-length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def run_load(
    url: str,
    requests: Sequence[bytes],
    rate: float,
    duration: float,
    warmup: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> dict[str, Any]:
    """Send ``rate`` requests per second for ``warmup + duration`` seconds; summarise."""
    parts = urlsplit(url)
    pool = _Pool(parts.hostname or "127.0.0.1", parts.port or 80, max_connections)
    samples: list[Sample] = []
    errors: dict[str, int] = {}
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    def failed(exc: BaseException) -> None:
        key = type(exc).__name__
        errors[key] = errors.get(key, 0) + 1

    async def one(due: float, payload: bytes) -> None:
        try:
            conn = await pool.acquire()
        except OSError as exc:
            failed(exc)
            return
        sent = time.perf_counter()
        try:
            status, first_byte, size, keep_alive = await asyncio.wait_for(
                conn.request(payload), REQUEST_TIMEOUT_S
            )
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            failed(exc)
            pool.release(conn, reusable=False)
            return
        done = time.perf_counter()
        pool.release(conn, reusable=keep_alive)
        samples.append(Sample(due, sent, first_byte, done, status, size))

    total = int(rate * (warmup + duration))
    interval = 1.0 / rate
    start = time.perf_counter() + 0.05
    measure_from = start + warmup
    index = 0
    while index < total:
        now = time.perf_counter()
        due = start + index * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        # Send everything that is due now (several when this loop woke late).
        while index < total and start + index * interval <= now:
            due = start + index * interval
            if due >= measure_from:
                lags.append(now - due)
            task = asyncio.ensure_future(one(due, requests[index % len(requests)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
    end_of_schedule = time.perf_counter()
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 1)
    for task in tasks:
        task.cancel()
    pool.close()

    measured = [s for s in samples if s.due >= measure_from]
    ok = [s for s in measured if s.status == 200]
    status_counts: dict[str, int] = {}
    for s in measured:
        status_counts[str(s.status)] = status_counts.get(str(s.status), 0) + 1
    latencies = sorted((s.done - s.due) * 1000 for s in ok)
    ttfb = sorted((s.first_byte - s.due) * 1000 for s in ok)
    window = [s for s in ok if s.done <= end_of_schedule]
    span = end_of_schedule - measure_from
    return {
        "offered_rps": rate,
        "duration_s": duration,
        "scheduled": total - int(rate * warmup),
        "completed": len(measured),
        "completed_all": len(samples),
        "ok": len(ok),
        "errors": errors,
        "status": status_counts,
        "achieved_rps": len(window) / span if span > 0 else 0.0,
        "latency_ms": percentiles(latencies),
        "ttfb_ms": percentiles(ttfb),
        "lag_p99_ms": percentiles(sorted(x * 1000 for x in lags))["p99"],
        "connections": pool.opened,
        "mean_body_bytes": (sum(s.body_bytes for s in ok) / len(ok)) if ok else 0,
    }


def percentiles(sorted_values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/p99.9/max of already sorted values (nan when empty)."""
    if not sorted_values:
        nan = float("nan")
        return {"p50": nan, "p90": nan, "p95": nan, "p99": nan, "p999": nan, "max": nan}

    def pick(q: float) -> float:
        return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "p999": pick(0.999),
        "max": sorted_values[-1],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, type=Path, help="JSON lines, one body each")
    parser.add_argument("--rate", required=True, type=float, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    headers = dict(h.split(":", 1) for h in args.header)
    requests = build_requests(args.url, bodies, {k.strip(): v.strip() for k, v in headers.items()})
    coroutine = run_load(
        args.url, requests, args.rate, args.duration, args.warmup, args.max_connections
    )
    try:
        import uvloop  # noqa: PLC0415 - the generator's own speed matters

        result = uvloop.run(coroutine)
    except ImportError:
        result = asyncio.run(coroutine)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
