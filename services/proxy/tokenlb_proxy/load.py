"""``tokenlb load``: a small traffic generator for a running gateway (the compose demo's).

Sends chat requests of heavy-tailed prompt sizes to one OpenAI-style base URL (a front
load balancer, or one replica), some of them streamed, and prints per target what the
gateway answered: requests and tokens by the ``X-Kong-LLM-Model`` header, which is how a
user sees the balance without looking inside. Waits for the URL to answer first, since
in docker compose the generator may start before the fleet is ready.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.table import Table

__all__ = ["LoadResult", "run_load"]

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "tokens", "flow")


@dataclass
class LoadResult:
    """What the generator saw, per target (``provider/model``)."""

    requests: dict[str, int]
    tokens: dict[str, int]
    failures: int


def _prompt(rng: random.Random) -> str:
    # Pareto-distributed length: most prompts short, a few very long, as in real traffic.
    words = min(3000, int(rng.paretovariate(1.3) * 12))
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _streamed_tokens(body: str) -> int:
    """Total tokens of the usage chunk of an SSE body (0 when there is none)."""
    for line in body.splitlines():
        if line.startswith("data: {") and '"usage"' in line:
            usage = json.loads(line[len("data: ") :]).get("usage")
            if usage:
                return int(usage.get("total_tokens", 0))
    return 0


async def _wait_ready(client: httpx.AsyncClient, url: str, wait_s: float) -> bool:
    """Whether ``url`` answers as a gateway does: any status but a load balancer's
    "no server available" (502/503/504) or a refused connection."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if (await client.get(url)).status_code not in (502, 503, 504):
                return True
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


async def _run(
    url: str, total: int, concurrency: int, stream_share: float, seed: int, wait_s: float
) -> LoadResult | None:
    rng = random.Random(seed)
    jobs = [(_prompt(rng), rng.random() < stream_share) for _ in range(total)]
    result = LoadResult(requests={}, tokens={}, failures=0)
    chat_url = f"{url.rstrip('/')}/chat/completions"
    async with httpx.AsyncClient(timeout=120) as client:
        if not await _wait_ready(client, url, wait_s):
            return None
        queue = list(reversed(jobs))

        async def worker() -> None:
            while queue:
                prompt, stream = queue.pop()
                body: dict[str, object] = {
                    "model": "any",
                    "messages": [{"role": "user", "content": prompt}],
                }
                if stream:
                    body["stream"] = True
                    body["stream_options"] = {"include_usage": True}
                try:
                    response = await client.post(
                        chat_url, json=body, headers={"authorization": "Bearer load-generator"}
                    )
                except httpx.HTTPError:
                    result.failures += 1
                    continue
                if response.status_code != 200:
                    result.failures += 1
                    continue
                target = response.headers.get("x-kong-llm-model", "unknown")
                if stream:
                    tokens = _streamed_tokens(response.text)
                else:
                    tokens = int(response.json().get("usage", {}).get("total_tokens", 0))
                result.requests[target] = result.requests.get(target, 0) + 1
                result.tokens[target] = result.tokens.get(target, 0) + tokens

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def run_load(
    url: str,
    *,
    requests: int = 300,
    concurrency: int = 16,
    stream_share: float = 0.3,
    seed: int = 2026,
    wait_s: float = 60.0,
) -> int:
    """Send the load to ``url`` (an OpenAI base URL ending in ``/v1``); an exit code."""
    console = Console()
    started = time.monotonic()
    result = asyncio.run(_run(url, requests, concurrency, stream_share, seed, wait_s))
    if result is None:
        console.print(f"[red]{url} did not answer within {wait_s:.0f} s[/red]")
        return 1
    elapsed = time.monotonic() - started
    table = Table(title=f"{requests} requests to {url} in {elapsed:.1f} s")
    for column in ("target", "requests", "total tokens", "share of tokens"):
        table.add_column(column, justify="left" if column == "target" else "right")
    grand = sum(result.tokens.values()) or 1
    for target in sorted(result.requests):
        tokens = result.tokens[target]
        share = f"{100 * tokens / grand:.1f}%"
        table.add_row(target, str(result.requests[target]), str(tokens), share)
    console.print(table)
    if result.failures:
        console.print(f"[red]{result.failures} request(s) failed[/red]")
        return 1
    return 0
