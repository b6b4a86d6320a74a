"""``tokenlb cluster up``: the docker-compose.yml topology as local processes, no docker.

A private redis-server, N proxy replicas sharing it, the aggregator, HAProxy in front
(the distribution's package, with ``deploy/haproxy/haproxy.cfg`` rendered for loopback),
and with ``--demo``
the mock upstream and the compose demo's kong.yaml; ``--load N`` then runs the compose
demo's traffic generator once. Every child runs the same command line as its compose
service (tests/integration/test_compose.py checks this against the ``cluster.json`` this
writes), so the compose file and the tested topology cannot drift apart.

Runs until SIGINT/SIGTERM, or until a child dies, then stops every child, newest first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from tokenlb_proxy.bundled import COMPOSE_CONFIG, HAPROXY_CONFIG, deploy_text
from tokenlb_proxy.children import Child, http_ok, port_open
from tokenlb_proxy.haproxy_config import HaproxyServer, render

__all__ = ["ClusterOptions", "run_cluster"]

#: The key the demo's targets send: the mock is fake, so a real key never goes there.
DEMO_KEY = "sk-demo-not-a-real-key"
#: Where docker-compose.yml's demo config points its targets (service name and port).
COMPOSE_MOCK_ADDRESS = "mock-upstream:9000"
STARTUP_TIMEOUT_S = 30.0
HAPROXY_FALLBACKS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


@dataclass(frozen=True)
class ClusterOptions:
    replicas: int = 3
    demo: bool = False
    config: Path | None = None
    #: Front (HAProxy) port; 0 picks a free one.
    port: int = 8080
    #: Replica i listens on replica_port + 2i, its admin on the next port; 0: free ports.
    replica_port: int = 8100
    #: Use this Redis instead of starting a private redis-server.
    redis_url: str | None = None
    haproxy: str | None = None
    #: Requests the demo traffic generator sends once the cluster is up (0: none).
    load: int = 0
    workdir: Path | None = None


@dataclass(frozen=True)
class Replica:
    port: int
    admin_port: int


class _Signals:
    """SIGINT/SIGTERM set a flag the start-up waits and the main loop read."""

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum

    def stop_requested(self) -> bool:
        return self.received is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tokenlb(*args: str) -> list[str]:
    # The running interpreter's tokenlb, whatever its install (wheel, checkout, image).
    return [sys.executable, "-m", "tokenlb_proxy.cli", *args]


def _find_haproxy(explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit if Path(explicit).is_file() else None
    found = shutil.which("haproxy")
    return found or next((p for p in HAPROXY_FALLBACKS if Path(p).is_file()), None)


def _replica_ready(replica: Replica) -> Callable[[], bool]:
    status = f"http://127.0.0.1:{replica.admin_port}/status"
    return lambda: port_open(replica.port) and http_ok(status)


def _aggregator_alive(status_url: str) -> bool:
    try:
        status = httpx.get(status_url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool((status.get("aggregators") or {}).get("alive"))


class _Cluster:
    """The running children and what ``cluster.json`` says about them."""

    def __init__(self, options: ClusterOptions, workdir: Path, signals: _Signals) -> None:
        self.options = options
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.signals = signals
        self.children: list[Child] = []
        self.state: dict[str, object] = {"workdir": str(workdir)}

    def spawn(
        self,
        name: str,
        program: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        console: bool = False,
    ) -> Child:
        log = None if console else self.logs / f"{name}.log"
        child = Child(name, program, argv, log, env)
        self.children.append(child)
        return child

    def ready(self, child: Child, probe: Callable[[], bool]) -> None:
        child.wait_ready(probe, self.signals.stop_requested, STARTUP_TIMEOUT_S)

    def start_redis(self) -> str:
        if self.options.redis_url:
            return self.options.redis_url
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server), "
                "or pass --redis-url to use a running Redis"
            )
        port = _free_port()
        args = ["--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
        child = self.spawn("redis", "redis-server", [binary, *args, "--dir", str(self.workdir)])
        self.ready(child, lambda: port_open(port))
        return f"redis://127.0.0.1:{port}/0"

    def start_mock(self) -> str:
        port = _free_port()
        args = ["mock-upstream", "--host", "127.0.0.1", "--port", str(port), "--latency-ms", "20"]
        child = self.spawn("mock-upstream", "tokenlb", _tokenlb(*args))
        url = f"http://127.0.0.1:{port}"
        self.ready(child, lambda: http_ok(f"{url}/health"))
        return url

    def config_path(self, mock_url: str | None) -> Path:
        if mock_url is not None:
            text = deploy_text(COMPOSE_CONFIG).replace(f"http://{COMPOSE_MOCK_ADDRESS}", mock_url)
            path = self.workdir / "kong.yaml"
            path.write_text(text)
            return path
        assert self.options.config is not None
        return self.options.config.resolve()

    def start_replicas(self, config: Path, redis: str, env: dict[str, str] | None) -> list[Replica]:
        base = self.options.replica_port
        replicas = [
            Replica(base + 2 * i, base + 2 * i + 1) if base else Replica(_free_port(), _free_port())
            for i in range(self.options.replicas)
        ]
        started = []
        for index, replica in enumerate(replicas, start=1):
            args = ["proxy", "--config", str(config), "--host", "127.0.0.1"]
            args += ["--port", str(replica.port), "--admin-host", "127.0.0.1"]
            args += ["--admin-port", str(replica.admin_port), "--redis-url", redis]
            started.append(self.spawn(f"proxy-{index}", "tokenlb", _tokenlb(*args), env))
        for child, replica in zip(started, replicas, strict=True):
            self.ready(child, _replica_ready(replica))
        return replicas

    def start_aggregator(self, redis: str, replica: Replica) -> None:
        """The compose ``aggregator`` service; ready once the replicas see its heartbeat.
        Traces go where the OTEL_EXPORTER_OTLP_* variables of this process say."""
        child = self.spawn("aggregator", "tokenlb", _tokenlb("aggregator", "--redis-url", redis))
        status = f"http://127.0.0.1:{replica.admin_port}/status"
        self.ready(child, lambda: _aggregator_alive(status))

    def start_haproxy(self, binary: str, replicas: list[Replica]) -> str:
        port = self.options.port or _free_port()
        servers = [
            HaproxyServer(f"proxy-{i}", f"127.0.0.1:{r.port}", r.admin_port)
            for i, r in enumerate(replicas, start=1)
        ]
        config = self.workdir / "haproxy.cfg"
        config.write_text(render(deploy_text(HAPROXY_CONFIG), f"127.0.0.1:{port}", servers))
        # -W -db: what the haproxy image's entrypoint adds (master-worker, foreground).
        child = self.spawn("haproxy", "haproxy", [binary, "-W", "-db", "-f", str(config)])
        self.ready(child, lambda: port_open(port))
        return f"http://127.0.0.1:{port}"

    def write_state(self) -> Path:
        self.state["processes"] = [
            {
                "name": c.name,
                "program": c.program,
                "args": c.argv[3:] if c.program == "tokenlb" else c.argv[1:],
                "pid": c.pid,
                "log": str(c.log_path) if c.log_path else None,
            }
            for c in self.children
        ]
        path = self.workdir / "cluster.json"
        path.write_text(json.dumps(self.state, indent=2) + "\n")
        return path

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def run_cluster(options: ClusterOptions) -> int:
    """Bring the cluster up, serve until a signal, stop it; a process exit code."""
    if not options.demo and options.config is None:
        print("tokenlb cluster up: --config FILE or --demo is required", file=sys.stderr)
        return 2
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tokenlb-cluster-"))
    signals = _Signals()
    cluster = _Cluster(options, workdir, signals)
    try:
        return _up(cluster, options)
    except RuntimeError as exc:
        print(f"tokenlb cluster up: {exc} (logs in {cluster.logs})", file=sys.stderr)
        for child in cluster.children:
            if not child.alive():
                print(f"--- {child.name} ---\n{child.tail()}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()


def _up(cluster: _Cluster, options: ClusterOptions) -> int:
    redis_url = cluster.start_redis()
    mock_url = cluster.start_mock() if options.demo else None
    # The replicas inherit this environment (DECK_* keys for the config); the demo's
    # targets are the mock, which gets the demo key, never a real one.
    env = {**os.environ, "DECK_OPENAI_API_KEY": DEMO_KEY} if options.demo else None
    config = cluster.config_path(mock_url)
    replicas = cluster.start_replicas(config, redis_url, env)
    cluster.start_aggregator(redis_url, replicas[0])
    haproxy = _find_haproxy(options.haproxy)
    front = cluster.start_haproxy(haproxy, replicas) if haproxy else None
    cluster.state.update(
        front=front,
        redis_url=redis_url,
        mock_url=mock_url,
        config=str(config),
        replicas=[
            {"url": f"http://127.0.0.1:{r.port}", "admin_url": f"http://127.0.0.1:{r.admin_port}"}
            for r in replicas
        ],
    )
    state_path = cluster.write_state()
    _print_endpoints(cluster, front, replicas, redis_url, mock_url, state_path)
    if options.load:
        target = front or f"http://127.0.0.1:{replicas[0].port}"
        args = ["load", "--url", f"{target}/v1", "--requests", str(options.load)]
        cluster.spawn("load", "tokenlb", _tokenlb(*args), console=True)
        cluster.write_state()
    return _serve(cluster)


def _serve(cluster: _Cluster) -> int:
    """Wait for a signal; a long-running child that dies ends the cluster with code 1."""
    while not cluster.signals.stop_requested():
        for child in cluster.children:
            if child.name != "load" and not child.alive():
                print(
                    f"tokenlb cluster up: {child.name} exited with code "
                    f"{child.process.returncode}; stopping the cluster\n{child.tail()}",
                    file=sys.stderr,
                )
                return 1
        time.sleep(0.2)
    print("tokenlb cluster up: stopping", flush=True)
    return 0


def _print_endpoints(
    cluster: _Cluster,
    front: str | None,
    replicas: list[Replica],
    redis_url: str,
    mock_url: str | None,
    state_path: Path,
) -> None:
    lines = []
    if front:
        lines.append(f"  front (HAProxy)  {front}/v1    <- point OpenAI clients here")
    else:
        lines.append(
            "  haproxy is not installed (apt-get install haproxy): no front load balancer;"
            " send traffic to the replicas directly"
        )
    for index, r in enumerate(replicas, start=1):
        admin = f"http://127.0.0.1:{r.admin_port}"
        lines.append(
            f"  replica {index}        http://127.0.0.1:{r.port}/v1    "
            f"admin {admin}/status {admin}/metrics"
        )
    lines.append(f"  redis            {redis_url}")
    if mock_url:
        lines.append(f"  mock upstream    {mock_url}    (GET /mock/stats)")
    lines.append(f"  logs             {cluster.logs}")
    lines.append(f"  state            {state_path}")
    print(f"tokenlb cluster up: {len(replicas)} replicas sharing one Redis", flush=True)
    print("\n".join(lines), flush=True)
    print("Ctrl-C (or SIGTERM) stops everything.", flush=True)
