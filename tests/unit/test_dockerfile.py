"""The Dockerfile, checked without Docker (no engine where these tests run).

Its RUN step must be the install command of scripts/demo.sh and scripts/test.sh (which
CI runs, then tests the installed wheel, offline tokenizer included), it must copy every
file the wheel is built from, run as non-root, and its HEALTHCHECK command must tell a
live replica from a dead one (run here against a real proxy).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import REPO, start_proxy

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: The one install command: uv installs exactly what uv.lock pins (tokenlb as a wheel).
LOCKED_SYNC = ("bash", "scripts/uv.sh", "sync", "--locked", "--no-editable", "--no-dev")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            out.append([])
        out[-1].append(instruction)
    return out


def script_installs(script: str) -> list[tuple[str, ...]]:
    """The install commands of ``scripts/<script>``, split into words."""
    lines = (REPO / "scripts" / script).read_text().splitlines()
    return [tuple(shlex.split(line)) for line in lines if "scripts/uv.sh sync" in line]


def test_multi_stage_slim_and_non_root() -> None:
    build, runtime = stages()
    assert build[0][1].endswith("AS build")
    assert runtime[0] == ("FROM", "python:3.11-slim")
    assert "RUN" not in {kind for kind, _ in runtime}, "the runtime stage installs nothing"
    [user] = [args for kind, args in runtime if kind == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    [entrypoint] = [args for kind, args in runtime if kind == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tokenlb"]


def test_run_steps_are_the_readme_install_steps() -> None:
    runs = [tuple(shlex.split(args)) for kind, args in instructions() if kind == "RUN"]
    assert runs == [LOCKED_SYNC]
    env = " ".join(args for kind, args in stages()[0] if kind == "ENV")
    assert "UV_PROJECT_ENVIRONMENT=/opt/tokenlb" in env
    # scripts/demo.sh is the user's install; scripts/test.sh installs the same plus the
    # test tools, and runs the whole suite on the result.
    assert script_installs("demo.sh") == [LOCKED_SYNC]
    assert script_installs("test.sh") == [(*LOCKED_SYNC, "--group", "test")]


def test_copies_everything_the_wheel_is_built_from() -> None:
    build = stages()[0]
    copied = {shlex.split(args)[0] for kind, args in build if kind == "COPY"}
    copied |= {src for kind, args in build if kind == "COPY" for src in shlex.split(args)[:-1]}
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", "uv.lock", "scripts/uv.sh", PYPROJECT["project"]["readme"]}
    needed |= set(wheel["packages"]) | set(wheel["force-include"])
    for path in needed:
        assert any(path == c or path.startswith(f"{c}/") for c in copied), path
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in needed:
        assert not any(Path(path).match(pattern) for pattern in ignored), path


def healthcheck_command() -> list[str]:
    [healthcheck] = [args for kind, args in stages()[1] if kind == "HEALTHCHECK"]
    return list(json.loads(healthcheck.split("CMD", 1)[1]))


def test_healthcheck_tells_a_live_replica_from_a_dead_one(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert "http://127.0.0.1:8001/status" in command[-1]  # the proxy's default admin port
    config = tmp_path / "kong.yaml"
    config.write_text((REPO / "examples" / "local-mock.yaml").read_text())
    process, _, admin_port = start_proxy(tmp_path, config, env={"DECK_OPENAI_API_KEY": "sk-x"})
    assert command[0] == "python"  # the image's; here, this interpreter

    def check(port: int) -> int:
        probe = command[-1].replace(":8001/", f":{port}/")
        argv = [sys.executable, *command[1:-1], probe]
        return subprocess.run(argv, check=False, timeout=10, capture_output=True).returncode

    try:
        assert check(admin_port) == 0
    finally:
        process.stop()
    assert check(admin_port) != 0
