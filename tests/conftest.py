"""Shared fixtures: a private redis-server per test session, flushed per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import ManagedProcess, start_redis


@pytest.fixture(scope="session")
def process_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(process_logs: Path) -> Iterator[tuple[ManagedProcess, int]]:
    proc, port = start_redis(process_logs)
    yield proc, port
    proc.stop()


@pytest.fixture
def redis_url(redis_server: tuple[ManagedProcess, int]) -> str:
    """A clean database on the session's redis-server."""
    _, port = redis_server
    client = redis.Redis(port=port)
    client.flushall()
    client.close()
    return f"redis://127.0.0.1:{port}/0"
