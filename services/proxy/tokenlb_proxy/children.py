"""Child processes of ``tokenlb cluster up``: started, waited for, stopped in order.

Each child's output goes to its own log file (or the console); readiness is a probe
function polled until it passes, the child dies, or ``should_stop`` says a signal came.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import httpx

__all__ = ["Child", "http_ok", "port_open"]

STOP_TIMEOUT_S = 10.0


class Child:
    """One running process with a name, a log and the command that started it."""

    def __init__(
        self,
        name: str,
        program: str,
        argv: Sequence[str],
        log_path: Path | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        #: What the command is called where docker-compose.yml runs it ("tokenlb", ...).
        self.program = program
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = log_path.open("wb") if log_path else None
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 2000) -> str:
        if self.log_path is None or self._log is None:
            return ""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(
        self, ready: Callable[[], bool], should_stop: Callable[[], bool], timeout_s: float
    ) -> None:
        """Poll ``ready``; RuntimeError if the child exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while not should_stop():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready within {timeout_s:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
