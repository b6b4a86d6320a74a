"""Helpers for the multi-replica tests: fleets, configs, workloads, load and imbalance."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.support import ManagedProcess, start_mock, start_proxies, start_redis

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


def chat_target(
    model: str, upstream_port: int, *, weight: int | None = None, **fields: Any
) -> dict[str, Any]:
    """One ``llm/v1/chat`` target: OpenAI's protocol to a mock upstream on this machine.

    ``weight`` is left out unless given, so the proxy's default applies as it would to a
    config that never mentions it; ``fields`` adds target keys such as ``limits``.
    """
    url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    target: dict[str, Any] = {"route_type": "llm/v1/chat"}
    if weight is not None:
        target["weight"] = weight
    target["model"] = {"provider": "openai", "name": model, "options": {"upstream_url": url}}
    return {**target, **fields}


def balanced_route(
    name: str, balancer: dict[str, Any], targets: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A route at ``/{name}`` with one ``ai-proxy-advanced`` plugin, also called ``name``.

    The instance name becomes the balancer's id (its state in Redis, its entry on an
    admin port's ``/status``), so a test finds a route's balancer by the route's name.
    """
    plugin = {
        "name": "ai-proxy-advanced",
        "instance_name": name,
        "config": {"balancer": balancer, "targets": list(targets)},
    }
    return {"name": name, "paths": [f"/{name}"], "plugins": [plugin]}


def declarative_config(routes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A Kong declarative document holding ``routes`` under one service.

    The service's own URL is never used (every route's plugin picks the upstream), so
    it points at a name that cannot resolve.
    """
    return {
        "_format_version": "3.0",
        "services": [{"name": "llm", "url": "http://unused.invalid", "routes": list(routes)}],
    }


Replica = tuple[ManagedProcess, int, int]
"""A started ``tokenlb proxy``: (process, proxy port, admin port)."""


@dataclass
class RunningFleet:
    """What ``running_fleet`` started: the mock upstreams (a client on each, in the order
    their arguments were given) and the replicas with and without the shared Redis."""

    mock_ports: list[int]
    mocks: list[httpx.Client]
    shared: list[Replica]
    local: list[Replica]

    @property
    def shared_ports(self) -> list[int]:
        return [port for _, port, _ in self.shared]

    @property
    def local_ports(self) -> list[int]:
        return [port for _, port, _ in self.local]


@contextlib.contextmanager
def running_fleet(
    logs: Path,
    config: Callable[..., dict[str, Any] | str],
    *,
    shared: int,
    local: int = 0,
    mocks: Sequence[Sequence[str]] = ((),),
) -> Iterator[RunningFleet]:
    """A private redis-server, one mock upstream per entry of ``mocks`` (its command-line
    arguments), ``logs``/kong.yaml from ``config(*mock_ports)`` (a document, dumped as
    YAML, or the file's text), ``shared`` replicas on that Redis and ``local`` more on
    their own embedded store, as a fleet without Redis runs (Kong's counters per worker).

    Every multi-replica test module starts its fleet this way, so they all start the
    same processes in the same order and stop every one of them, last started first,
    however the block ends (a replica left running would hold its ports and its Redis
    connections into the next module).
    """
    processes: list[ManagedProcess] = []
    try:
        redis_proc, redis_port = start_redis(logs)
        processes.append(redis_proc)
        mock_ports = []
        for args in mocks:
            mock_proc, mock_port = start_mock(logs, *args)
            processes.append(mock_proc)
            mock_ports.append(mock_port)
        document = config(*mock_ports)
        config_path = logs / "kong.yaml"
        config_path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        redis_url = f"redis://127.0.0.1:{redis_port}"
        with_redis = start_proxies(logs, config_path, shared, redis_url=redis_url)
        processes += [proc for proc, _, _ in with_redis]
        without_redis = start_proxies(logs, config_path, local)
        processes += [proc for proc, _, _ in without_redis]
        with contextlib.ExitStack() as clients:
            mock_clients = [
                clients.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5))
                for port in mock_ports
            ]
            yield RunningFleet(mock_ports, mock_clients, with_redis, without_redis)
    finally:
        for proc in reversed(processes):
            proc.stop()


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
