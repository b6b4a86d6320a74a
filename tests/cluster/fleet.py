"""Helpers for the multi-replica tests: configs, workloads, load and imbalance."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

API_KEY = "sk-fleet-test-key"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india")


@dataclass(frozen=True)
class Scenario:
    """One route with its own balancer: a strategy over two (or more) targets."""

    name: str
    strategy: str
    models: tuple[str, ...]
    weights: tuple[int, ...] = (100, 100)
    prices: tuple[tuple[float, float], ...] | None = None
    algorithm: str = "lowest-usage"


def fleet_config(scenarios: Sequence[Scenario], mock_port: int) -> str:
    """A kong.yaml with one service, one route per scenario, one plugin per route."""
    lines = [
        '_format_version: "3.0"',
        "services:",
        "- name: llm",
        "  url: http://unused.invalid",
        "  routes:",
    ]
    for s in scenarios:
        lines += [f"  - name: {s.name}", "    paths:", f"    - /{s.name}"]
    lines.append("plugins:")
    for s in scenarios:
        lines += [
            "- name: ai-proxy-advanced",
            f"  route: {s.name}",
            "  config:",
            "    balancer:",
            f"      algorithm: {s.algorithm}",
            f"      tokens_count_strategy: {s.strategy}",
            "    targets:",
        ]
        for index, model in enumerate(s.models):
            lines += [
                "    - route_type: llm/v1/chat",
                f"      weight: {s.weights[index]}",
                "      model:",
                "        provider: openai",
                f"        name: {model}",
                "        options:",
                f"          upstream_url: http://127.0.0.1:{mock_port}/v1/chat/completions",
            ]
            if s.prices:
                lines += [
                    f"          input_cost: {s.prices[index][0]}",
                    f"          output_cost: {s.prices[index][1]}",
                ]
                lines += ["      logging:", "        log_statistics: true"]
            lines += [
                "      auth:",
                "        header_name: Authorization",
                f"        header_value: Bearer {API_KEY}",
            ]
    return "\n".join(lines) + "\n"


def write_config(path: Path, scenarios: Sequence[Scenario], mock_port: int) -> Path:
    path.write_text(fleet_config(scenarios, mock_port))
    return path


def heavy_tailed_prompts(count: int, seed: int) -> list[str]:
    """Prompt texts whose lengths are log-normal: median ~60 words, a long tail to 1500."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        words = max(1, min(1500, int(rng.lognormvariate(4.1, 1.0))))
        prompts.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    return prompts


async def run_load(
    proxy_ports: Sequence[int],
    route: str,
    prompts: Sequence[str],
    concurrency: int,
    *,
    timeout_s: float = 120.0,
) -> list[str]:
    """Send every prompt once through the replicas (round-robin), ``concurrency`` at a time.

    Uses the official OpenAI SDK; returns what went wrong with each failed request. The
    timeout is generous: these 2-core machines are shared, and a stall is not a failure.
    """
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency * 2), timeout=httpx.Timeout(60.0)
    )
    clients = [
        openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/{route}",
            api_key="client-key",
            max_retries=0,
            http_client=http,
        )
        for port in proxy_ports
    ]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(prompts)):
        queue.put_nowait(index)
    failures: list[str] = []

    async def worker() -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            client = clients[index % len(clients)]
            try:
                await client.chat.completions.create(
                    model="any",
                    messages=[{"role": "user", "content": prompts[index]}],
                    max_tokens=200,
                )
            except openai.OpenAIError as exc:
                failures.append(f"request {index} via {client.base_url}: {exc!r}")

    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), timeout=timeout_s
        )
    finally:
        await http.aclose()
    return failures


def counted_per_model(stats: dict[str, dict[str, float]], scenario: Scenario) -> dict[str, float]:
    """The quantity the scenario balances, per model, as the upstream counted it."""
    counted: dict[str, float] = {}
    for index, model in enumerate(scenario.models):
        row = stats.get(model, {})
        prompt = float(row.get("prompt_tokens", 0))
        completion = float(row.get("completion_tokens", 0))
        if scenario.strategy == "prompt-tokens":
            counted[model] = prompt
        elif scenario.strategy == "completion-tokens":
            counted[model] = completion
        elif scenario.strategy == "cost":
            assert scenario.prices is not None
            input_cost, output_cost = scenario.prices[index]
            counted[model] = (prompt * input_cost + completion * output_cost) / 1e6
        else:
            counted[model] = prompt + completion
    return counted


def imbalance(counted: dict[str, float], scenario: Scenario) -> float:
    """Largest relative gap between targets' counted quantity per unit of weight."""
    per_weight = [counted[m] / scenario.weights[i] for i, m in enumerate(scenario.models)]
    return (max(per_weight) - min(per_weight)) / max(per_weight)
