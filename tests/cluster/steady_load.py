"""Steady background traffic through the OpenAI SDK, recorded request by request.

Fault tests need load that keeps flowing while something breaks, and a record of every
request (when it started, how long it took, whether it failed) to cut by phase
afterwards. ``SteadyLoad`` runs its own event loop in a thread, paced at a fixed rate so
a shared machine is not saturated, spreading requests round-robin over the replicas.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import openai


@dataclass(frozen=True)
class Outcome:
    """One request: monotonic start, seconds taken, and the error if it failed."""

    started: float
    seconds: float
    replica: int
    error: str | None


class SteadyLoad:
    """``rate`` requests per second (at most ``concurrency`` in flight) until ``stop()``."""

    def __init__(
        self,
        proxy_ports: Sequence[int],
        route: str,
        prompts: Sequence[str],
        *,
        rate: float,
        concurrency: int,
        max_tokens: int = 200,
    ) -> None:
        self.proxy_ports = list(proxy_ports)
        self.route = route
        self.prompts = list(prompts)
        self.rate = rate
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._crash: BaseException | None = None

    def start(self) -> SteadyLoad:
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._crash is not None:
            raise RuntimeError("the load generator crashed") from self._crash
        return self.outcomes

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self._crash = exc

    async def _main(self) -> None:
        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self.concurrency * 2),
            timeout=httpx.Timeout(30.0),
        )
        clients = [
            openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/{self.route}",
                api_key="client-key",
                max_retries=0,  # a failure must show, not be retried away by the SDK
                http_client=http,
            )
            for port in self.proxy_ports
        ]
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        sent = 0
        try:
            while not self._stop.is_set():
                await slots.acquire()
                replica = sent % len(clients)
                prompt = self.prompts[sent % len(self.prompts)]
                task = asyncio.create_task(self._one(clients[replica], replica, prompt, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)
        finally:
            await http.aclose()

    async def _one(
        self, client: openai.AsyncOpenAI, replica: int, prompt: str, slots: asyncio.Semaphore
    ) -> None:
        started = time.monotonic()
        error: str | None = None
        try:
            await client.chat.completions.create(
                model="any",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.max_tokens,
            )
        except openai.OpenAIError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            slots.release()
        self.outcomes.append(Outcome(started, time.monotonic() - started, replica, error))


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` (0..1) percentile of ``values`` by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]
