"""The benchmark suite: tokenlb against the direct path and LiteLLM, side by side, one run.

    bench/.venv/bin/python bench/run.py --quick     # ~10 minutes
    bench/.venv/bin/python bench/run.py             # full: longer steps, finer search

Systems, all on the same mock upstream and the same Redis:

1. ``direct``: the load generator talks to the mock upstream (the floor);
2. ``tokenlb-1``: one tokenlb replica, lowest-usage over two targets, Redis;
3. ``tokenlb-2``: two tokenlb replicas behind HAProxy (round robin), same Redis;
4. ``litellm-1``: one LiteLLM proxy worker, ``usage-based-routing-v2``, same Redis and
   the same two targets.

For each system and for non-streamed and streamed requests, an open-loop load (see
``loadgen.py``) climbs a ladder of arrival rates until p99 passes 50 ms (or requests fail,
or the rate is not kept up), then bisects once or twice between the last good and the
first bad rate. Each step records latency percentiles, CPU seconds per 1000 requests of
every process (system under test, mock, Redis), Redis commands and CPU per request; peak
RSS is read at the end. A balance phase then sends the same load through two replicas of
each balancer to a mock with model-like latency and compares how evenly the counted
tokens landed on the two targets. ``store_latency.py`` times the Lua scripts alone.

The system under test is pinned to one CPU and the harness (load generator, mock, Redis)
to the other, so "one replica" means one core; the direct path's own mock runs on the
system's CPU, so its one hop crosses cores as each of a gateway's hops does (``hops.py``
measures what that costs here). Results go to ``bench/results/``:
``results.json``, ``results.md`` and ``latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import hops
import report
import store_latency

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
#: Sustainable means: p99 under this, at most 0.1% failed, 95% of the offered rate kept up.
P99_LIMIT_MS = 50.0
MAX_FAILED_SHARE = 0.001
MIN_KEPT_UP = 0.95
#: The rate the latency target is stated at, and the rate CPU per request is compared at
#: (every system sustains it, so nobody's number is inflated by queueing).
TARGET_RATE = 200.0
CPU_RATE = 100.0
#: Seed of the request bodies: every system gets the same requests in the same order.
BODY_SEED = 7
SYSTEMS = ("direct", "tokenlb-1", "tokenlb-2", "litellm-1")


@dataclass(frozen=True)
class Mode:
    quick: bool
    duration_s: float
    warmup_s: float
    rates: tuple[float, ...]
    refine: int
    balance_rate: float
    balance_duration_s: float


QUICK = Mode(
    True, 4.0, 1.0, (10, 20, 50, 100, 200, 400, 700, 1000, 1400, 2000, 2800, 4000), 1, 40, 15
)
FULL = Mode(
    False, 10.0, 2.0, (10, 20, 50, 100, 200, 300, 500, 700, 1000, 1400, 2000, 2800, 4000), 2, 60, 30
)


@dataclass
class System:
    """A running system under test: where to send requests and which processes are it."""

    name: str
    url: str
    processes: dict[str, harness.Managed]
    headers: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.stop()


@dataclass
class Context:
    workdir: Path
    python: str
    litellm: str | None
    sut_cpu: int | None
    harness_cpu: int | None
    redis: harness.Managed
    redis_port: int
    mock: harness.Managed
    mock_port: int
    bodies: dict[str, Path]


# --- request bodies -----------------------------------------------------------------------

WORDS = [
    "the",
    "balancer",
    "routes",
    "each",
    "request",
    "to",
    "the",
    "target",
    "with",
    "the",
    "lowest",
    "decayed",
    "usage",
    "so",
    "that",
    "tokens",
    "spread",
    "evenly",
    "across",
    "deployments",
    "keys",
    "regions",
    "and",
    "models",
    "while",
    "latency",
    "stays",
    "low",
    "under",
    "load",
    "and",
    "replicas",
    "agree",
    "through",
    "one",
    "atomic",
    "script",
]


def write_bodies(workdir: Path, count: int = 200) -> dict[str, Path]:
    """Chat bodies with log-normal prompt sizes (median ~120 words, a few over 2,000)."""
    rng = random.Random(BODY_SEED)
    plain, streamed = [], []
    for i in range(count):
        words = min(4000, max(3, int(rng.lognormvariate(4.8, 1.0))))
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        body: dict[str, Any] = {
            "model": harness.CLIENT_MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"request {i}: {text}"},
            ],
        }
        plain.append(json.dumps(body))
        streamed.append(json.dumps({**body, "stream": True}))
    paths = {"plain": workdir / "bodies-plain.jsonl", "stream": workdir / "bodies-stream.jsonl"}
    paths["plain"].write_text("\n".join(plain) + "\n")
    paths["stream"].write_text("\n".join(streamed) + "\n")
    return paths


# --- systems ------------------------------------------------------------------------------


@contextlib.contextmanager
def _stopped_on_error(system: System) -> Iterator[None]:
    """Stop what a half-started system already runs when starting the rest fails."""
    try:
        yield
    except BaseException:
        system.stop()
        raise


def start_direct(ctx: Context) -> System:
    """The floor: the load generator straight to a mock of its own, pinned to the system
    under test's core. Every hop of a gateway's path (client to replica, replica to
    Redis, replica to upstream) crosses cores, so the floor's one hop does too; with the
    shared mock on the load generator's core it would cross none, and "added latency"
    would charge the gateway for a hop the direct path has in any real deployment."""
    mock, port = harness.start_mock(ctx.workdir, ctx.python, ctx.sut_cpu, "mock-direct")
    return System("direct", f"http://127.0.0.1:{port}/v1/chat/completions", {"mock": mock})


def start_tokenlb(
    ctx: Context,
    replicas: int,
    mock_port: int | None = None,
    source: Path = harness.REPO,
    label: str = "",
) -> System:
    port = mock_port or ctx.mock_port
    config = harness.write_tokenlb_config(ctx.workdir, port)
    system = System(f"tokenlb-{replicas}{label}", "", {})
    ports = []
    with _stopped_on_error(system):
        for i in range(replicas):
            proc, proxy_port = harness.start_tokenlb(
                ctx.workdir,
                ctx.python,
                config,
                ctx.redis_port,
                ctx.sut_cpu,
                f"tokenlb{label}-{port}-{i}",
                source,
            )
            system.processes[f"tokenlb[{i}]"] = proc
            ports.append(proxy_port)
        if replicas > 1:
            lb, lb_port = harness.start_haproxy(ctx.workdir, ports, ctx.sut_cpu, f"haproxy-{port}")
            system.processes["haproxy"] = lb
            ports = [lb_port]
    system.url = f"http://127.0.0.1:{ports[0]}/v1/chat/completions"
    return system


def start_litellm(ctx: Context, replicas: int, mock_port: int | None = None) -> System:
    assert ctx.litellm is not None
    port = mock_port or ctx.mock_port
    config = harness.write_litellm_config(ctx.workdir, port, ctx.redis_port)
    system = System(f"litellm-{replicas}", "", {})
    ports = []
    with _stopped_on_error(system):
        for i in range(replicas):
            proc, proxy_port = harness.start_litellm(
                ctx.workdir, ctx.litellm, config, ctx.sut_cpu, f"litellm-{port}-{i}"
            )
            system.processes[f"litellm[{i}]"] = proc
            ports.append(proxy_port)
        if replicas > 1:
            lb, lb_port = harness.start_haproxy(ctx.workdir, ports, ctx.sut_cpu, f"haproxy-l{port}")
            system.processes["haproxy"] = lb
            ports = [lb_port]
    system.url = f"http://127.0.0.1:{ports[0]}/v1/chat/completions"
    return system


# --- one load step ------------------------------------------------------------------------


def _redis_snapshot(client: redis.Redis) -> dict[str, float]:
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    evalsha = stats.get("cmdstat_evalsha", {})
    snapshot = {
        "calls": float(sum(v["calls"] for v in stats.values())),
        "evalsha": float(evalsha.get("calls", 0)),
        "evalsha_usec": float(evalsha.get("usec", 0)),
        "usec": float(sum(v["usec"] for v in stats.values())),
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
    }
    return snapshot


def run_step(
    ctx: Context, system: System, kind: str, rate: float, mode: Mode, *, warmup: float | None = None
) -> dict[str, Any]:
    """Offer ``rate`` req/s for one step; latency, CPU and Redis work per request."""
    processes = {"mock": ctx.mock, "redis": ctx.redis, **system.processes}
    client = redis.Redis(port=ctx.redis_port)
    cpu_before = {name: harness.cpu_seconds(p.pid) for name, p in processes.items()}
    redis_before = _redis_snapshot(client)
    out = ctx.workdir / f"step-{system.name}-{kind}-{rate:g}.json"
    command = [
        ctx.python,
        str(BENCH / "loadgen.py"),
        "--url",
        system.url,
        "--bodies",
        str(ctx.bodies[kind]),
        "--rate",
        str(rate),
        "--duration",
        str(mode.duration_s),
        "--warmup",
        str(mode.warmup_s if warmup is None else warmup),
        "--header",
        f"authorization:Bearer {harness.MASTER_KEY}",
        "--out",
        str(out),
    ]
    if ctx.harness_cpu is not None:
        command = ["taskset", "-c", str(ctx.harness_cpu), *command]
    subprocess.run(command, check=True, timeout=mode.duration_s + mode.warmup_s + 60)
    result: dict[str, Any] = json.loads(out.read_text())
    requests = max(1, result["completed_all"])
    result["cpu_s_per_1k"] = {
        name: (harness.cpu_seconds(p.pid) - cpu_before[name]) / requests * 1000
        for name, p in processes.items()
    }
    redis_after = _redis_snapshot(client)
    client.close()
    delta = {key: (redis_after[key] - redis_before[key]) / requests for key in redis_after}
    # A script's inner commands show up in commandstats too (and inside its own time), so
    # a system that uses scripts is charged its EVALSHA calls and their time; one that
    # does not (LiteLLM) its commands.
    scripted = delta["evalsha"] > 0
    result["redis_per_request"] = {
        "commands": delta["calls"],
        "evalsha": delta["evalsha"],
        "round_trips": delta["evalsha"] if scripted else delta["calls"],
        "server_usec": delta["evalsha_usec"] if scripted else delta["usec"],
        "process_cpu_usec": delta["cpu_s"] * 1e6,
    }
    result["sustainable"] = sustainable(result)
    return result


def sustainable(step: dict[str, Any]) -> bool:
    scheduled = max(1, step["scheduled"])
    failed = scheduled - step["ok"]
    return (
        step["ok"] > 0
        and step["latency_ms"]["p99"] < P99_LIMIT_MS
        and failed / scheduled <= MAX_FAILED_SHARE
        and step["achieved_rps"] >= MIN_KEPT_UP * step["offered_rps"]
    )


def sweep(
    ctx: Context, system: System, kind: str, mode: Mode, log: Callable[[str], None]
) -> dict[str, Any]:
    """Climb the rate ladder until two rates in a row are not sustainable, then bisect
    ``refine`` times between the best sustainable rate and the first one that was not."""
    steps: list[dict[str, Any]] = []
    best: float | None = None
    worst: float | None = None

    def step(rate: float) -> bool:
        result = run_step(ctx, system, kind, rate, mode)
        clearly_saturated = result["achieved_rps"] < 0.9 * rate
        if not result["sustainable"] and not clearly_saturated:
            # Other jobs share this machine: one stall of theirs can push a step's p99
            # over the limit. A rate that was kept up counts as sustainable if a second
            # try passes; both tries are kept in the JSON.
            time.sleep(0.5)
            retry = run_step(ctx, system, kind, rate, mode)
            if retry["sustainable"] or retry["latency_ms"]["p99"] < result["latency_ms"]["p99"]:
                result, other = retry, result
            else:
                other = retry
            result["other_try"] = other
        steps.append(result)
        lat = result["latency_ms"]
        log(
            f"  {system.name:10} {kind:6} {rate:6g}/s -> {result['achieved_rps']:7.0f}/s "
            f"p50 {lat['p50']:7.2f} p99 {lat['p99']:8.2f} ms  ok {result['ok']}/"
            f"{result['scheduled']}  {'ok' if result['sustainable'] else 'SATURATED'}"
        )
        time.sleep(0.5)  # let queues drain before the next step
        return bool(result["sustainable"])

    failed_in_a_row = 0
    for rate in mode.rates:
        if step(rate):
            best, worst, failed_in_a_row = rate, None, 0
            continue
        # One failed rate may still be a neighbour's doing: the climb ends at the second
        # failed rate in a row, and the search below starts from the first.
        failed_in_a_row += 1
        if worst is None:
            worst = rate
        if failed_in_a_row == 2:
            break
    for _ in range(mode.refine):
        if best is None or worst is None:
            break
        middle = round((best + worst) / 2 / 10) * 10
        if middle in (best, worst):
            break
        if step(middle):
            best = middle
        else:
            worst = middle
    steps.sort(key=lambda s: s["offered_rps"])
    return {"steps": steps, "max_sustainable_rps": best, "first_unsustainable_rps": worst}


def warm_up(ctx: Context, system: System, limit: int | None = None) -> None:
    """Every body once, both kinds, before any step is measured.

    Imports, connection pools, script loading and tokenizer set-up are then not charged
    to the first step, and the mock has tokenised every prompt (it caches that), so the
    floor is as warm as the systems measured above it.
    """
    headers = {"authorization": f"Bearer {harness.MASTER_KEY}", "content-type": "application/json"}
    with httpx.Client(timeout=30) as client:
        for kind in ("plain", "stream"):
            for line in ctx.bodies[kind].read_text().splitlines()[:limit]:
                response = client.post(system.url, content=line, headers=headers)
                response.raise_for_status()


def measure_system(
    ctx: Context,
    start: Callable[[], System],
    kinds: list[str],
    mode: Mode,
    log: Callable[[str], None],
) -> dict[str, Any]:
    system = start()
    try:
        warm_up(ctx, system)
        redis.Redis(port=ctx.redis_port).flushall()
        own = {name: p for name, p in system.processes.items() if name != "mock"}
        result: dict[str, Any] = {"processes": list(own)}
        for kind in kinds:
            result[kind] = sweep(ctx, system, kind, mode, log)
        result["peak_rss_mb"] = {name: harness.peak_rss_mb(p.pid) for name, p in own.items()}
    finally:
        system.stop()
    return result


# --- balance ------------------------------------------------------------------------------


def measure_balance(
    ctx: Context, start: Callable[[int], System], mock_port: int, mode: Mode
) -> dict[str, Any]:
    """Two replicas of a balancer, the same open-loop load, how evenly tokens landed."""
    redis.Redis(port=ctx.redis_port).flushall()
    system = start(mock_port)
    try:
        warm_up(ctx, system, limit=3)
        mock_url = f"http://127.0.0.1:{mock_port}"
        httpx.post(f"{mock_url}/mock/reset", timeout=5).raise_for_status()
        step = run_step(
            ctx,
            system,
            "plain",
            mode.balance_rate,
            Mode(mode.quick, mode.balance_duration_s, 0, (), 0, 0, 0),
            warmup=0.0,
        )
        stats = httpx.get(f"{mock_url}/mock/stats", timeout=5).json()
    finally:
        system.stop()
    by_model = stats["by_model"]
    tokens = {t: by_model.get(t, {}).get("total_tokens", 0) for t in harness.TARGETS}
    requests = {t: by_model.get(t, {}).get("requests", 0) for t in harness.TARGETS}
    top = max(tokens.values()) or 1
    return {
        "rate": mode.balance_rate,
        "duration_s": mode.balance_duration_s,
        "ok": step["ok"],
        "latency_ms": step["latency_ms"],
        "total_tokens": tokens,
        "requests": requests,
        "imbalance": (max(tokens.values()) - min(tokens.values())) / top,
    }


# --- the run ------------------------------------------------------------------------------


def export_revision(revision: str, workdir: Path) -> Path:
    """The tree of ``revision`` in a scratch directory (the checkout is left alone)."""
    target = workdir / f"source-{revision.replace('/', '_')}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(harness.REPO), "archive", "--format=tar", revision],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def versions(litellm: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for package in ("httpx", "litestar", "uvicorn", "redis", "msgspec", "httpx-aiohttp"):
        try:
            from importlib.metadata import version  # noqa: PLC0415

            found[package] = version(package)
        except Exception:  # noqa: S112 - reporting only
            continue
    if litellm:
        probe = subprocess.run(
            [
                str(Path(litellm).with_name("python")),
                "-c",
                "import importlib.metadata as m;print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        found["litellm"] = probe.stdout.strip() or "unknown"
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps (~10 minutes)")
    parser.add_argument(
        "--systems",
        default="direct,tokenlb-1,tokenlb-2,litellm-1",
        help="comma-separated subset of direct,tokenlb-1,tokenlb-2,litellm-1",
    )
    parser.add_argument("--kinds", default="plain,stream", help="plain,stream or one of them")
    parser.add_argument("--no-balance", action="store_true", help="skip the balance phase")
    parser.add_argument("--no-store", action="store_true", help="skip the store micro-benchmark")
    parser.add_argument(
        "--litellm",
        default=str(BENCH / ".venv-litellm" / "bin" / "litellm"),
        help="the litellm executable (installed by bench/setup.sh)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure one replica of git revision REV (system tokenlb-1@REV), "
        "for before/after numbers from the same run",
    )
    parser.add_argument(
        "--rates",
        help="comma-separated rates instead of the ladder (e.g. 300 to compare CPU per "
        "request of two revisions at one load)",
    )
    parser.add_argument("--duration", type=float, help="seconds per step instead of the mode's")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.rates:
        rates = tuple(float(r) for r in args.rates.split(","))
        mode = dataclasses.replace(mode, rates=rates, refine=0)
    if args.duration:
        mode = dataclasses.replace(mode, duration_s=args.duration)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [name for name in systems if name not in SYSTEMS] + [
        kind for kind in kinds if kind not in ("plain", "stream")
    ]
    if unknown:
        parser.error(f"unknown system or kind: {', '.join(unknown)}")
    litellm = args.litellm if Path(args.litellm).exists() else None
    litellm_missing = None
    if litellm is None and ("litellm-1" in systems or not args.no_balance):
        litellm_missing = f"{args.litellm} not found: run bench/setup.sh"
        print(f"LiteLLM skipped: {litellm_missing}", flush=True)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {
        "mode": "quick" if mode.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "machine": machine(),
        "versions": versions(litellm),
        "pinned": pin,
        "round_trip_us": hops.round_trips() if pin else None,
        "criteria": {
            "p99_limit_ms": P99_LIMIT_MS,
            "max_failed_share": MAX_FAILED_SHARE,
            "min_kept_up": MIN_KEPT_UP,
            "target_rate": TARGET_RATE,
            "cpu_rate": CPU_RATE,
            "duration_s": mode.duration_s,
            "warmup_s": mode.warmup_s,
        },
        "systems": {},
        "litellm_missing": litellm_missing,
    }
    with contextlib.ExitStack() as cleanup:
        # Every process started below is stopped on the way out, whatever fails.
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tokenlb-bench-")))
        harness_cpu, sut_cpu = (0, 1) if pin else (None, None)
        redis_proc, redis_port = harness.start_redis(workdir, harness_cpu)
        cleanup.callback(redis_proc.stop)
        mock, mock_port = harness.start_mock(workdir, sys.executable, harness_cpu)
        cleanup.callback(mock.stop)
        ctx = Context(
            workdir=workdir,
            python=sys.executable,
            litellm=litellm,
            sut_cpu=sut_cpu,
            harness_cpu=harness_cpu,
            redis=redis_proc,
            redis_port=redis_port,
            mock=mock,
            mock_port=mock_port,
            bodies=write_bodies(workdir),
        )
        starters: dict[str, Callable[[], System]] = {
            "direct": lambda: start_direct(ctx),
            "tokenlb-1": lambda: start_tokenlb(ctx, 1),
            "tokenlb-2": lambda: start_tokenlb(ctx, 2),
            "litellm-1": lambda: start_litellm(ctx, 1),
        }
        if args.baseline:
            source = export_revision(args.baseline, workdir)
            label = f"@{args.baseline}"
            starters[f"tokenlb-1{label}"] = lambda: start_tokenlb(ctx, 1, None, source, label)
            systems.insert(
                systems.index("tokenlb-1") + 1 if "tokenlb-1" in systems else 0, f"tokenlb-1{label}"
            )
        for name in systems:
            if name.startswith("litellm") and litellm is None:
                continue
            log(f"{name}:")
            results["systems"][name] = measure_system(ctx, starters[name], kinds, mode, log)
        if not args.no_balance:
            # A mock that answers like a model (200 ms + 4 ms per token, up to ~1 s) so
            # requests overlap, as they do in production: a balancer that counts
            # tokens only after the response has many decisions in flight blind.
            slow, slow_port = harness.start_mock(
                workdir,
                sys.executable,
                harness_cpu,
                "mock-slow",
                "--latency-ms",
                "200",
                "--token-delay-ms",
                "4",
            )
            try:
                balance = {
                    "tokenlb-2": measure_balance(
                        ctx, lambda p: start_tokenlb(ctx, 2, p), slow_port, mode
                    )
                }
                log(f"balance tokenlb-2: {balance['tokenlb-2']['imbalance']:.2%}")
                if litellm is not None:
                    balance["litellm-2"] = measure_balance(
                        ctx, lambda p: start_litellm(ctx, 2, p), slow_port, mode
                    )
                    log(f"balance litellm-2: {balance['litellm-2']['imbalance']:.2%}")
                results["balance"] = balance
            finally:
                slow.stop()
    if not args.no_store:
        log("store micro-benchmark:")
        results["store"] = asyncio.run(
            store_latency.measure(calls=5000 if mode.quick else 20000, targets=2, concurrency=32)
        )
    results["elapsed_s"] = round(time.time() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    markdown = report.markdown(results)
    (args.out / "results.md").write_text(markdown)
    report.plot(results, args.out / "latency.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
