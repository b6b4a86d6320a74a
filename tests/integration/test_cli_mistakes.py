"""Operator mistakes, run as an operator runs the commands: one line on stderr naming what
is wrong, a non-zero exit, no traceback, and nothing left running."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, free_port, port_open, tokenlb_command

KEY = "sk-cli-mistakes-not-a-key"
MOCK_CONFIG = REPO / "examples" / "local-mock.yaml"


def run(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """``tokenlb ARGS`` to its end; ``env`` adds variables, or removes those set to None."""
    environ: dict[str, str | None] = {**os.environ, "DECK_OPENAI_API_KEY": KEY, **(env or {})}
    return subprocess.run(
        tokenlb_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={name: value for name, value in environ.items() if value is not None},
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


UNREACHABLE = "redis://:hunter2-secret@127.0.0.1:1/0"
MASKED = "redis://:***@127.0.0.1:1/0"


@pytest.mark.parametrize(
    "args",
    [
        ("stats",),
        ("stats", "--json"),
        ("config", "sync", str(MOCK_CONFIG)),
        ("config", "dump"),
        ("config", "apply", "-f", str(REPO / "tests/data/seed/kubernetes-plugin.yaml")),
        ("proxy", "--port", "0", "--admin-port", "0"),  # no --config: nothing to serve
        ("cluster", "up", "--demo", "--port", "0", "--replica-port", "0"),
    ],
    ids=" ".join,
)
def test_an_unreachable_redis_is_one_line_for_every_command(args: tuple[str, ...]) -> None:
    result = run(*args, "--redis-url", UNREACHABLE)

    assert result.returncode == 1
    line = one_line(result)
    command = " ".join(a for a in args[:2] if not a.startswith("-") and "/" not in a)
    assert line.startswith(f"tokenlb {command}: Redis at {MASKED} is unreachable ("), line
    assert "hunter2" not in result.stdout + result.stderr


def test_the_environment_url_is_reported_the_same_way() -> None:
    result = run("stats", env={"TOKENLB_REDIS_URL": UNREACHABLE})
    assert result.returncode == 1
    assert one_line(result).startswith(f"tokenlb stats: Redis at {MASKED} is unreachable (")


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (("proxy", "--config", str(MOCK_CONFIG)), "TOKENLB_REDIS_TIMEOUT_S", "soon"),
        (("proxy", "--config", str(MOCK_CONFIG)), "TOKENLB_CONFIG_POLL_INTERVAL_S", "0"),
        (("proxy", "--config", str(MOCK_CONFIG)), "TOKENLB_USAGE_EVENTS", "maybe"),
        (("aggregator", "--redis-url", UNREACHABLE), "TOKENLB_AGGREGATOR_CLAIM_IDLE_MS", "soon"),
    ],
)
def test_an_unusable_environment_value_is_one_line_naming_it(
    args: tuple[str, ...], variable: str, value: str
) -> None:
    result = run(*args, env={variable: value})
    assert result.returncode == 2
    assert one_line(result).startswith(f"tokenlb {args[0]}: {variable}={value!r}: ")


@pytest.mark.parametrize("config", ["/no/such/kong.yaml", "/"])
def test_a_config_file_that_cannot_be_read_is_one_line(config: str) -> None:
    result = run("proxy", "--config", config, "--port", "0", "--admin-port", "0")
    assert result.returncode == 1
    assert one_line(result).startswith(f"tokenlb proxy: invalid config {config}: cannot read")


def test_cluster_up_with_a_missing_config_starts_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "kong.yaml"
    result = run("cluster", "up", "--config", str(missing), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 2
    assert one_line(result) == f"tokenlb cluster up: --config {missing} is not a file"
    assert not (tmp_path / "work").exists()


def test_a_config_with_one_problem_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(MOCK_CONFIG.read_text().replace("lowest-usage", "fastest"))
    result = run("proxy", "--config", str(broken), "--port", "0", "--admin-port", "0")
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"tokenlb proxy: invalid config {broken}: ")
    assert "plugins[0].config.balancer.algorithm" in line


def test_a_config_with_several_problems_lists_each(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(MOCK_CONFIG.read_text())
    result = run(
        "proxy", "--config", str(broken), "--port", "0", "--admin-port", "0",
        env={"DECK_OPENAI_API_KEY": None},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    header, *problems = result.stderr.splitlines()
    assert header == f"tokenlb proxy: invalid config {broken}: {len(problems)} errors"
    assert len(problems) == 2
    assert all("DECK_OPENAI_API_KEY" in problem for problem in problems)


def test_dump_to_a_file_it_cannot_write_says_so(redis_url: str, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "live.yaml"
    result = run("config", "dump", "-o", str(target), "--redis-url", redis_url)
    assert result.returncode == 1
    assert one_line(result).startswith(f"tokenlb config dump: cannot write {target}: ")
