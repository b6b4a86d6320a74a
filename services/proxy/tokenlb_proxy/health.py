"""What feeds the fleet-wide circuit breaker: which failures count, and Retry-After.

Kong >= 3.13 (``balancer.max_fails`` / ``fail_timeout``, nginx semantics): ``error``,
``timeout`` and ``invalid_header`` always count as failures of the target; ``http_403`` and
``http_404`` never do (the target answered; the request or its credentials were wrong).
tokenlb reads the rest as: an HTTP status counts when ``failover_criteria`` lists it as
``http_<status>``, i.e. when the operator said that status means "this target failed".
Independently, an upstream 429 carrying ``Retry-After`` (or OpenAI's ``retry-after-ms``)
takes the target out of rotation until then, whatever ``max_fails`` says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_MS", "counts_as_failure", "retry_after_ms"]

#: Failure kinds that always count (the proxy calls an invalid 200 "invalid").
_ALWAYS = frozenset({"error", "timeout", "invalid", "invalid_header"})
_NEVER = frozenset({"http_403", "http_404"})
#: A Retry-After beyond this is clamped: an upstream's typo (or a daily quota) must not take
#: a target away for days; after an hour one request probes it again.
MAX_RETRY_AFTER_MS = 3_600_000


def counts_as_failure(kind: str, failover_criteria: frozenset[str]) -> bool:
    """Whether a failed attempt of ``kind`` ("error", "timeout", "invalid", "http_<status>")
    counts towards ``max_fails``."""
    if kind in _ALWAYS:
        return True
    if kind in _NEVER:
        return False
    return kind.startswith("http_") and kind in failover_criteria


def retry_after_ms(headers: Mapping[str, str], now_s: float | None = None) -> int:
    """Milliseconds an upstream asked to wait (``retry-after-ms``, or ``retry-after`` as
    seconds or an HTTP date), clamped to ``MAX_RETRY_AFTER_MS``; 0 when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return min(MAX_RETRY_AFTER_MS, math.ceil(value))
    raw = headers.get("retry-after")
    if raw is None:
        return 0
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return 0
        if when.tzinfo is None:
            return 0
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return min(MAX_RETRY_AFTER_MS, math.ceil(seconds * 1000))
