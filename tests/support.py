"""Real processes for tests: redis-server, the mock upstream and proxy replicas.

Every process runs the same commands a user (or docker-compose.yml) runs, on free
loopback ports, with its output in a log file that failing tests print.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.control.repository import StoredConfig

__all__ = [
    "ManagedProcess",
    "free_port",
    "start_mock",
    "start_proxy",
    "start_redis",
    "stored_config",
    "tokenlb_command",
]

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tokenlb_command(*args: str) -> list[str]:
    """``tokenlb ARGS`` with this interpreter's installed entry point (or the module)."""
    script = Path(sys.executable).with_name("tokenlb")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "tokenlb_proxy.cli", *args]


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    # Children import tokenlb exactly as this process does (installed, or PYTHONPATH).
    env = dict(os.environ)
    if extra:
        env.update(extra)
    return env


class ManagedProcess:
    """A child process with its output captured to ``log_path``."""

    def __init__(
        self, name: str, command: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(env),
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{self.output()[-3000:]}")

    def signal_stop(self) -> None:
        if self.alive():
            self.process.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            self.process.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a machine dies."""
        if self.alive():
            self.process.kill()
        self.process.wait()
        self._log.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def start_redis(log_dir: Path, port: int | None = None, *extra: str) -> tuple[ManagedProcess, int]:
    """A private redis-server on a free port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    proc = ManagedProcess(
        f"redis-{port}",
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
            str(log_dir),
            *extra,
        ],
        log_dir,
    )
    proc.wait_until(lambda: port_open(port))
    return proc, port


def start_mock(log_dir: Path, *args: str, port: int | None = None) -> tuple[ManagedProcess, int]:
    """``tokenlb mock-upstream`` on a free port."""
    port = port or free_port()
    proc = ManagedProcess(
        f"mock-{port}", tokenlb_command("mock-upstream", "--port", str(port), *args), log_dir
    )
    proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"))
    return proc, port


def start_proxy(
    log_dir: Path,
    config: Path,
    *,
    redis_url: str | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[ManagedProcess, int, int]:
    """``tokenlb proxy`` on free ports; returns (process, proxy port, admin port)."""
    port = port or free_port()
    admin_port = free_port()
    args = ["proxy", "--config", str(config), "--port", str(port), "--admin-port", str(admin_port)]
    if redis_url:
        args += ["--redis-url", redis_url]
    proc = ManagedProcess(f"proxy-{port}", tokenlb_command(*args), log_dir, env)
    proc.wait_until(lambda: port_open(port) and http_ok(f"http://127.0.0.1:{admin_port}/status"))
    return proc, port, admin_port


def start_proxies(
    log_dir: Path,
    config: Path,
    count: int,
    *,
    redis_url: str | None = None,
    env: dict[str, str] | None = None,
) -> list[tuple[ManagedProcess, int, int]]:
    """``count`` replicas started side by side (faster than one after another); when one
    fails to start, the others are stopped before the error propagates."""
    started: list[tuple[ManagedProcess, int, int]] = []
    try:
        for _ in range(count):
            port, admin_port = free_port(), free_port()
            args = ["proxy", "--config", str(config), "--port", str(port)]
            args += ["--admin-port", str(admin_port)]
            if redis_url:
                args += ["--redis-url", redis_url]
            proc = ManagedProcess(f"proxy-{port}", tokenlb_command(*args), log_dir, env)
            started.append((proc, port, admin_port))
        for proc, port, admin_port in started:
            proc.wait_until(_serving(port, admin_port))
    except BaseException:
        for proc, _, _ in started:
            proc.stop()
        raise
    return started


def _serving(port: int, admin_port: int) -> Callable[[], bool]:
    """Whether a replica answers on its proxy port and its admin ``/status``."""
    return lambda: port_open(port) and http_ok(f"http://127.0.0.1:{admin_port}/status")


def stored_config(redis_url: str) -> StoredConfig | None:
    """The fleet's config document in Redis, as the replicas read it (None: none yet)."""

    async def load() -> StoredConfig | None:
        repository = RedisRepository.from_url(redis_url)
        try:
            return await repository.load()
        finally:
            await repository.close()

    return asyncio.run(load())
