"""Processes of the benchmark: Redis, the mock upstream, tokenlb, HAProxy and LiteLLM.

Everything listens on 127.0.0.1 on free ports, logs into the run's work directory and is
stopped (by its own pid) when the run ends. Each process can be pinned to one CPU with
``taskset`` so the system under test and the load harness do not take each other's core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
#: The key LiteLLM's proxy insists on (it refuses to start without one); sent to every
#: system so requests are byte-identical.
MASTER_KEY = "sk-bench-master-0123456789abcdef0123456789abcdef"
UPSTREAM_KEY = "sk-bench-upstream"
#: Both balancers see the same two targets: two model names on the same mock, so the
#: mock's per-model counters tell how the tokens were split.
TARGETS = ("target-a", "target-b")
CLIENT_MODEL = "gpt-4o-mini"
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, timeout=1.0, headers=headers).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Managed:
    """A child process, its log, and the CPU it is pinned to."""

    name: str
    command: list[str]
    log_path: Path
    cpu: int | None = None
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        command = self.command
        if self.cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self.cpu), *command]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready; see {self.log_path}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system, children included) and peak RSS of one process tree."""

    cpu_s: float
    peak_rss_mb: float


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """CPU used so far by ``pid`` and its live descendants (taskset execs in place)."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def peak_rss_mb(pid: int) -> float:
    """Largest resident set the tree's processes reached (VmHWM, summed over the tree)."""
    total_kb = 0
    for proc in _tree(pid):
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


# --- the processes ----------------------------------------------------------------------


def start_redis(workdir: Path, cpu: int | None) -> tuple[Managed, int]:
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    proc = Managed(
        "redis",
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
            str(workdir),
        ],
        workdir / "redis.log",
        cpu,
    )
    proc.wait_until(lambda: port_open(port))
    return proc, port


def tokenlb_command(python: str, *args: str) -> list[str]:
    return [python, "-m", "tokenlb_proxy.cli", *args]


def start_mock(
    workdir: Path, python: str, cpu: int | None, name: str = "mock", *args: str
) -> tuple[Managed, int]:
    port = free_port()
    proc = Managed(
        name,
        tokenlb_command(python, "mock-upstream", "--port", str(port), *args),
        workdir / f"{name}.log",
        cpu,
    )
    proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"))
    return proc, port


def write_tokenlb_config(workdir: Path, mock_port: int) -> Path:
    """Two targets on the mock, lowest-usage on total tokens, header auth: as a user has it."""
    upstream = f"http://127.0.0.1:{mock_port}"
    targets = "".join(
        f"""
    - model:
        name: {name}
        provider: openai
        options:
          upstream_url: {upstream}/v1/chat/completions
      route_type: llm/v1/chat
      auth:
        header_name: Authorization
        header_value: Bearer {UPSTREAM_KEY}"""
        for name in TARGETS
    )
    path = workdir / f"tokenlb-{mock_port}.yaml"
    path.write_text(
        f"""_format_version: "3.0"
services:
- name: mock
  url: {upstream}
  routes:
  - name: chat
    paths: [/v1/chat/completions]
    methods: [POST]
plugins:
- name: ai-proxy-advanced
  service: mock
  config:
    balancer:
      algorithm: lowest-usage
      tokens_count_strategy: total-tokens
    targets:{targets}
"""
    )
    return path


def start_tokenlb(
    workdir: Path,
    python: str,
    config: Path,
    redis_port: int,
    cpu: int | None,
    name: str,
    source: Path = REPO,
) -> tuple[Managed, int]:
    """A replica running the code in ``source`` (this checkout, or an exported revision)."""
    port, admin = free_port(), free_port()
    proc = Managed(
        name,
        [
            *tokenlb_command(python, "proxy", "--config", str(config), "--port", str(port)),
            "--admin-port",
            str(admin),
            "--redis-url",
            f"redis://127.0.0.1:{redis_port}/0",
        ],
        workdir / f"{name}.log",
        cpu,
        env={"PYTHONPATH": str(source / "services" / "proxy")},
    )
    proc.wait_until(lambda: port_open(port) and http_ok(f"http://127.0.0.1:{admin}/status"))
    return proc, port


def write_litellm_config(workdir: Path, mock_port: int, redis_port: int) -> Path:
    """The same two targets as one model group, ``usage-based-routing-v2`` on the same Redis.

    TPM/RPM limits are set far above the load so they never reject: the comparison is
    about routing, not rate limiting.
    """
    deployments = "".join(
        f"""
  - model_name: {CLIENT_MODEL}
    litellm_params:
      model: openai/{name}
      api_base: http://127.0.0.1:{mock_port}/v1
      api_key: {UPSTREAM_KEY}
      tpm: 1000000000
      rpm: 100000000"""
        for name in TARGETS
    )
    path = workdir / f"litellm-{mock_port}.yaml"
    path.write_text(
        f"""model_list:{deployments}
router_settings:
  routing_strategy: usage-based-routing-v2
  redis_host: 127.0.0.1
  redis_port: {redis_port}
litellm_settings:
  telemetry: false
general_settings:
  master_key: {MASTER_KEY}
"""
    )
    return path


def start_litellm(
    workdir: Path, litellm: str, config: Path, cpu: int | None, name: str
) -> tuple[Managed, int]:
    """One LiteLLM proxy worker, access log off (tokenlb logs none either)."""
    port = free_port()
    log_config = workdir / "litellm-logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "loggers": {"uvicorn.access": {"level": "WARNING"}},
            }
        )
    )
    proc = Managed(
        name,
        [
            litellm,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--log_config",
            str(log_config),
        ],
        workdir / f"{name}.log",
        cpu,
        # The model cost map is otherwise downloaded at start; this machine has no network.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
    )
    proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health/liveliness"), timeout=120)
    return proc, port


def start_haproxy(
    workdir: Path, backends: Sequence[int], cpu: int | None, name: str
) -> tuple[Managed, int]:
    """HAProxy round-robin over ``backends``, keep-alive both ways, one thread."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p} maxconn 1000" for i, p in enumerate(backends))
    config = workdir / f"{name}.cfg"
    config.write_text(
        f"""global
  maxconn 8192
  nbthread 1
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  balance roundrobin
{servers}
"""
    )
    proc = Managed(name, [binary, "-db", "-f", str(config)], workdir / f"{name}.log", cpu)
    proc.wait_until(lambda: port_open(port))
    return proc, port


def python_of_this_venv() -> str:
    return sys.executable
