"""Fixtures of the modules that drive a proxy against the mock upstream.

A module gets one mock upstream (reset before each of its tests when it uses
``fresh_mock``) and runs once per store, embedded and Redis (``store_url``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_proxy_e2e import Mock, serve_mock, store_url_for


@pytest.fixture(scope="module")
def mock(process_logs: Path) -> Iterator[Mock]:
    yield from serve_mock(process_logs)


@pytest.fixture
def fresh_mock(mock: Mock) -> None:
    mock.reset()


@pytest.fixture(scope="module", params=["local", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return store_url_for(request)
