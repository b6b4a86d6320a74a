"""One replica and the config in Redis: what it serves at start, and when Redis changes.

- A stored document that does not compile on this replica leaves the current config
  serving; ``/status`` and the log say which version failed and where, never a value.
- Redis away at start: the replica serves its file, and stores it once Redis answers.
- No config anywhere: the replica says so and does not start.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from tests.support import (
    ManagedProcess,
    free_port,
    start_mock,
    start_proxy,
    start_redis,
    stored_config,
    tokenlb_command,
)
from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.keys import CONFIG_KEY

SECRET_IN_THE_WRONG_FIELD = "sk-follow-secret-0123456789abcdef"
PATIENCE_S = 15.0


@pytest.fixture(scope="module")
def mock_chat_url(process_logs: Path) -> Iterator[str]:
    process, port = start_mock(process_logs)
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    process.stop()


def config(mock_chat_url: str, model: str) -> dict[str, Any]:
    target = {
        "route_type": "llm/v1/chat",
        "model": {"provider": "openai", "name": model, "options": {"upstream_url": mock_chat_url}},
        "auth": {"header_name": "Authorization", "header_value": "Bearer sk-upstream"},
    }
    plugin = {"name": "ai-proxy-advanced", "config": {"targets": [target]}}
    return {"_format_version": "3.0", "plugins": [plugin]}


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def served_model(port: int) -> str:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="c", max_retries=0) as c:
        reply = c.chat.completions.create(model="any", messages=[{"role": "user", "content": "x"}])
    return reply.model


def status(admin_port: int) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{admin_port}/status", timeout=5).json()
    return body


def wait_for(condition: Callable[[], bool], what: str, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {PATIENCE_S} s\n{proc.output()[-3000:]}")


def store(redis_url: str, document: dict[str, Any], expected_version: int) -> None:
    """Store ``document`` as the Admin API would, minus the validation (which would refuse
    what these tests want a replica to see)."""

    async def save() -> None:
        repository = RedisRepository.from_url(redis_url)
        try:
            await repository.save(document, expected_version)
        finally:
            await repository.close()

    asyncio.run(save())


def test_a_document_that_does_not_compile_here_leaves_the_config_serving(
    tmp_path: Path, process_logs: Path, redis_url: str, mock_chat_url: str
) -> None:
    file = write(tmp_path / "kong.yaml", config(mock_chat_url, "model-a"))
    proc, port, admin_port = start_proxy(process_logs, file, redis_url=redis_url)
    try:
        assert served_model(port) == "model-a"
        first = stored_config(redis_url)
        assert first is not None
        assert status(admin_port)["config_version"] == 1

        broken = copy.deepcopy(first.document)
        broken["plugins"][0]["config"]["balancer"]["algorithm"] = SECRET_IN_THE_WRONG_FIELD
        store(redis_url, broken, 1)
        wait_for(lambda: status(admin_port)["config_error"] is not None, "the error", proc)
        shown = status(admin_port)
        assert shown["config_version"] == 1
        assert shown["config_error"]["version"] == 2
        [error] = shown["config_error"]["errors"]
        assert error.startswith("plugins[0].config.balancer.algorithm: ")
        assert served_model(port) == "model-a"
        assert (
            SECRET_IN_THE_WRONG_FIELD not in httpx.get(f"http://127.0.0.1:{admin_port}/status").text
        )
        assert "config version 2 does not compile on this replica" in proc.output()
        assert SECRET_IN_THE_WRONG_FIELD not in proc.output()

        fixed = copy.deepcopy(first.document)
        fixed["plugins"][0]["config"]["targets"][0]["model"]["name"] = "model-b"
        store(redis_url, fixed, 2)
        wait_for(lambda: status(admin_port)["config_version"] == 3, "version 3", proc)
        assert status(admin_port)["config_error"] is None
        assert served_model(port) == "model-b"
    finally:
        proc.stop()


def test_without_redis_at_start_the_file_is_served_then_stored(
    tmp_path: Path, mock_chat_url: str
) -> None:
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    file = write(tmp_path / "kong.yaml", config(mock_chat_url, "model-a"))
    proc, port, admin_port = start_proxy(tmp_path, file, redis_url=redis_url)
    redis_proc: ManagedProcess | None = None
    try:
        assert served_model(port) == "model-a"
        assert status(admin_port)["config_version"] == 0  # served, not stored
        assert "serving " + str(file) in proc.output()

        redis_proc, _ = start_redis(tmp_path, redis_port)
        wait_for(lambda: status(admin_port)["config_version"] == 1, "storing the file", proc)
        client = redis.Redis(port=redis_port, decode_responses=True)
        try:
            assert client.hget(CONFIG_KEY, "version") == "1"
        finally:
            client.close()
        assert served_model(port) == "model-a"
    finally:
        proc.stop()
        if redis_proc is not None:
            redis_proc.stop()


def test_a_replica_without_a_config_anywhere_does_not_start(redis_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        ports = ["--port", str(free_port()), "--admin-port", str(free_port())]
        return subprocess.run(
            tokenlb_command("proxy", *ports, *args),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    empty = run("--redis-url", redis_url)
    assert empty.returncode == 1
    assert "Redis holds no config: start with --config FILE" in empty.stderr

    nothing = run()
    assert nothing.returncode == 2
    assert "--config FILE (or TOKENLB_CONFIG) is required without --redis-url" in nothing.stderr
