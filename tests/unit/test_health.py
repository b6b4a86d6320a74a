"""Which failures feed the circuit breaker, and how an upstream's Retry-After is read."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tokenlb_proxy.health import MAX_RETRY_AFTER_MS, counts_as_failure, retry_after_ms

KONG_DEFAULT = frozenset({"error", "timeout"})
EVERYTHING = frozenset(
    {"error", "timeout", "invalid_header", "http_403", "http_404", "http_429", "http_500"}
    | {"http_502", "http_503", "http_504", "non_idempotent"}
)


@pytest.mark.parametrize("kind", ["error", "timeout", "invalid"])
@pytest.mark.parametrize("criteria", [KONG_DEFAULT, frozenset(), EVERYTHING])
def test_connection_failures_timeouts_and_invalid_answers_always_count(
    kind: str, criteria: frozenset[str]
) -> None:
    assert counts_as_failure(kind, criteria)


@pytest.mark.parametrize("kind", ["http_403", "http_404"])
def test_403_and_404_never_count(kind: str) -> None:
    assert not counts_as_failure(kind, EVERYTHING)


@pytest.mark.parametrize("kind", ["http_429", "http_500", "http_502", "http_503", "http_504"])
def test_other_statuses_count_only_when_listed(kind: str) -> None:
    assert counts_as_failure(kind, EVERYTHING)
    assert not counts_as_failure(kind, KONG_DEFAULT)


@pytest.mark.parametrize("kind", ["http_400", "http_401", "http_422", "http_501"])
def test_statuses_kong_cannot_list_never_count(kind: str) -> None:
    # Client errors say nothing about the target; Kong's enum cannot list these anyway.
    assert not counts_as_failure(kind, EVERYTHING)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 0),
        ({"retry-after": "7"}, 7_000),
        ({"retry-after": " 2.5 "}, 2_500),
        ({"retry-after": "0"}, 0),
        ({"retry-after": "-3"}, 0),
        ({"retry-after": "soon"}, 0),
        ({"retry-after": "nan"}, 0),
        ({"retry-after": "99999999"}, MAX_RETRY_AFTER_MS),
        # OpenAI's millisecond header wins over the seconds one.
        ({"retry-after-ms": "1234.2", "retry-after": "9"}, 1_235),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9_000),
        ({"retry-after-ms": "0", "retry-after": "9"}, 9_000),
    ],
)
def test_retry_after_values(headers: dict[str, str], expected: int) -> None:
    assert retry_after_ms(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert retry_after_ms({"retry-after": later}, now_s=now.timestamp()) == 30_000
    earlier = format_datetime(datetime(2025, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert retry_after_ms({"retry-after": earlier}, now_s=now.timestamp()) == 0
