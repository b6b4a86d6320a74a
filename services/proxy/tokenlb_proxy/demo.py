"""``tokenlb demo``: a whole local fleet, some traffic, and the balance it produced.

Starts the mock upstream, a private redis-server when one is installed (otherwise each
replica uses its embedded store), several proxy replicas sharing one config, then sends
requests of heavy-tailed sizes spread over the replicas and prints per-target totals.
Needs no API key, no docker and no network beyond loopback.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from tokenlb_proxy.stats import format_share, share_basis, share_header, shares

__all__ = ["run_demo"]

DEMO_KEY = "sk-demo-not-a-real-key"
MODELS = {"gpt-4": (30.0, 60.0), "gpt-4o-mini": (0.15, 0.6)}
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "tokens", "flow")
STARTUP_TIMEOUT_S = 20.0
#: The demo balancer; its final table shows each target's share of what it counts.
ALGORITHM = "lowest-usage"
TOKENS_COUNT_STRATEGY = "total-tokens"

_CONFIG = """\
_format_version: "3.0"
plugins:
- name: ai-proxy-advanced
  instance_name: demo
  config:
    balancer:
      algorithm: {algorithm}
      tokens_count_strategy: {strategy}
    targets:
{targets}
"""
_TARGET = """\
    - model:
        name: {model}
        provider: openai
        options:
          max_tokens: 512
          temperature: 1.0
          upstream_url: http://127.0.0.1:{mock_port}/v1/chat/completions
          input_cost: {input_cost}
          output_cost: {output_cost}
      route_type: llm/v1/chat
      auth:
        header_name: Authorization
        header_value: Bearer ${{{{ env "DECK_OPENAI_API_KEY" }}}}
"""


@dataclass
class _TargetTally:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tokenlb(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenlb_proxy.cli", *args]


def _wait_http(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not start within {STARTUP_TIMEOUT_S:.0f} s")


def _prompt(rng: random.Random) -> str:
    # Pareto-distributed length: most prompts short, a few very long, as in real traffic.
    words = min(3000, int(rng.paretovariate(1.3) * 12))
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def _send_traffic(
    ports: list[int], total: int, concurrency: int, console: Console
) -> dict[str, _TargetTally]:
    rng = random.Random(2026)
    prompts = [_prompt(rng) for _ in range(total)]
    tallies: dict[str, _TargetTally] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)
    failures = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("sending chat requests", total=total)

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal failures
            while not queue.empty():
                index = queue.get_nowait()
                port = ports[index % len(ports)]
                response = await client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={
                        "model": "any",
                        "messages": [{"role": "user", "content": prompts[index]}],
                    },
                    headers={"authorization": "Bearer client-side-key-is-replaced"},
                )
                if response.status_code != 200:
                    failures += 1
                else:
                    model = response.headers.get("x-kong-llm-model", "?").split("/", 1)[-1]
                    usage = response.json()["usage"]
                    tally = tallies.setdefault(model, _TargetTally())
                    tally.requests += 1
                    tally.prompt_tokens += usage["prompt_tokens"]
                    tally.completion_tokens += usage["completion_tokens"]
                    in_cost, out_cost = MODELS.get(model, (0.0, 0.0))
                    tally.cost += (
                        usage["prompt_tokens"] * in_cost + usage["completion_tokens"] * out_cost
                    ) / 1e6
                progress.advance(task)

        async with httpx.AsyncClient(timeout=60) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    if failures:
        console.print(f"[red]{failures} request(s) failed[/red]")
    return tallies


def _print_table(console: Console, tallies: dict[str, _TargetTally], title: str) -> None:
    """Per target what the clients saw, and its share of what the balancer counts (the
    same basis as ``tokenlb stats``). Targets are named by model alone (all are OpenAI's
    here, the title says so), which keeps the table within 80 columns."""
    basis = share_basis(ALGORITHM, TOKENS_COUNT_STRATEGY)
    table = Table(title=title)
    columns = ("target", "requests", "prompt", "completion", "total", "cost $", share_header(basis))
    for column in columns:
        table.add_column(column, justify="left" if column == "target" else "right")
    models = sorted(tallies)
    parts = shares([float(getattr(tallies[model], basis)) for model in models])
    for model, share in zip(models, parts, strict=True):
        t = tallies[model]
        table.add_row(
            model,
            str(t.requests),
            str(t.prompt_tokens),
            str(t.completion_tokens),
            str(t.total_tokens),
            f"{t.cost:.4f}",
            format_share(share),
        )
    console.print(table)


def run_demo(*, requests: int = 300, replicas: int = 3, concurrency: int = 24) -> int:
    """Run the demo; returns a process exit code."""
    console = Console()
    processes: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="tokenlb-demo-"))
    logs = (workdir / "processes.log").open("wb")

    def spawn(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, stdout=logs, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        processes.append(process)
        return process

    try:
        mock_port = _free_port()
        mock = spawn(_tokenlb("mock-upstream", "--port", str(mock_port), "--require-key", DEMO_KEY))
        _wait_http(f"http://127.0.0.1:{mock_port}/health", mock, "mock upstream")
        console.print(f"mock upstream (fake OpenAI) on 127.0.0.1:{mock_port}")

        redis_url: str | None = None
        redis_binary = shutil.which("redis-server")
        if redis_binary:
            redis_port = _free_port()
            spawn(
                [
                    redis_binary,
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]
            )
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            console.print(f"redis-server on 127.0.0.1:{redis_port}: one balancer for the fleet")
        else:
            console.print(
                "[yellow]redis-server is not installed: every replica balances on its own "
                "embedded store (install redis-server for the fleet-wide balancer)[/yellow]"
            )

        config = workdir / "kong.yaml"
        targets = "".join(
            _TARGET.format(model=m, mock_port=mock_port, input_cost=i, output_cost=o)
            for m, (i, o) in MODELS.items()
        )
        config.write_text(
            _CONFIG.format(algorithm=ALGORITHM, strategy=TOKENS_COUNT_STRATEGY, targets=targets)
        )
        env = {**os.environ, "DECK_OPENAI_API_KEY": DEMO_KEY}
        ports: list[int] = []
        admin_ports: list[int] = []
        for _ in range(replicas):
            port, admin_port = _free_port(), _free_port()
            args = [
                "proxy",
                "--config",
                str(config),
                "--port",
                str(port),
                "--admin-port",
                str(admin_port),
            ]
            if redis_url:
                args += ["--redis-url", redis_url]
            proxy = spawn(_tokenlb(*args), env)
            _wait_http(f"http://127.0.0.1:{admin_port}/status", proxy, "proxy replica")
            ports.append(port)
            admin_ports.append(admin_port)
        console.print(
            f"{replicas} proxy replicas on ports {', '.join(map(str, ports))} "
            f"(config: the seed's two targets, {ALGORITHM} by {TOKENS_COUNT_STRATEGY})"
        )

        tallies = asyncio.run(_send_traffic(ports, requests, concurrency, console))
        _print_table(console, tallies, "Tokens per target (openai), as the clients saw them")
        status = httpx.get(f"http://127.0.0.1:{admin_ports[0]}/status", timeout=5).json()
        console.print(
            f"fleet status from replica 1: store={status['store']}, "
            f"degraded={status['degraded']}, tokenizer={status['tokenizer']}"
        )
        console.print(f"process logs: {workdir / 'processes.log'}")
        return 0
    except RuntimeError as exc:
        console.print(f"[red]demo failed: {exc}[/red] (logs: {workdir / 'processes.log'})")
        return 1
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()
