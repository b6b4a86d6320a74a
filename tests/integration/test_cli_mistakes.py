"""Operator mistakes, run as an operator runs the commands: one line on stderr naming what
is wrong, a non-zero exit, no traceback, and nothing left running."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.support import REPO, free_port, port_open, tokenlb_command

KEY = "sk-cli-mistakes-not-a-key"
MOCK_CONFIG = REPO / "examples" / "local-mock.yaml"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tokenlb_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DECK_OPENAI_API_KEY": KEY, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (asserting there is just one)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield blocker.getsockname()[1]


@pytest.mark.parametrize("taken", ["--port", "--admin-port"])
def test_a_port_in_use_stops_the_proxy_with_one_line(taken: str, taken_port: int) -> None:
    ports = {"--port": free_port(), "--admin-port": free_port()}
    ports[taken] = taken_port
    (other,) = (port for flag, port in ports.items() if flag != taken)
    args = [str(a) for flag_port in ports.items() for a in flag_port]

    result = run("proxy", "--config", str(MOCK_CONFIG), *args)

    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"tokenlb proxy: cannot listen on 127.0.0.1:{taken_port}: "), line
    assert result.stdout == ""
    # The replica is gone and never served its other port: nothing listens there.
    assert not port_open(other)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", other))


def test_a_port_in_use_stops_the_mock_upstream_with_one_line(taken_port: int) -> None:
    result = run("mock-upstream", "--port", str(taken_port))
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"tokenlb mock-upstream: cannot listen on 127.0.0.1:{taken_port}: ")


def test_a_port_out_of_range_is_one_line() -> None:
    result = run("proxy", "--config", str(MOCK_CONFIG), "--port", "70000")
    assert result.returncode == 1
    assert one_line(result).startswith("tokenlb proxy: cannot listen on 127.0.0.1:70000: ")
