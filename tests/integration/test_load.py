"""``tokenlb load``, the compose demo's traffic generator, against a real proxy and mock."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_proxy_e2e import (
    Mock,
    route,
    running_proxy,
    serve_mock,
    target,
    write_config,
)
from tests.support import free_port, tokenlb_command


@pytest.fixture(scope="module")
def mock(process_logs: Path) -> Iterator[Mock]:
    yield from serve_mock(process_logs)


def load(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = tokenlb_command("load", "--url", url, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_sends_the_requests_and_shows_the_balance(
    mock: Mock, tmp_path: Path, process_logs: Path
) -> None:
    mock.reset()
    targets = [target(m, mock.chat_url) for m in ("gpt-4", "gpt-4o-mini")]
    config = write_config(tmp_path / "kong.yaml", mock, [route("chat", targets)])
    with running_proxy(process_logs, config, None) as proxy:
        result = load(f"{proxy.url}/v1", "--requests", "40", "--concurrency", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    stats = mock.stats()
    assert stats["total"]["requests"] == 40
    for model in ("gpt-4", "gpt-4o-mini"):
        served = stats["by_model"][model]
        assert f"openai/{model}" in result.stdout
        assert f"│ {served['requests']:>8} │ {served['total_tokens']:>12} │" in result.stdout
    streamed = [r for r in mock.requests() if r["body"].get("stream")]
    assert 0 < len(streamed) < 40  # a share of the load is streamed


def test_gives_up_on_a_url_that_never_answers() -> None:
    result = load(f"http://127.0.0.1:{free_port()}/v1", "--requests", "1", "--wait", "1")
    assert result.returncode == 1
    assert "did not answer within 1 s" in result.stdout
