"""Where Kong's per-request log lines go: stdout (the default), stderr, a file, or nowhere."""

from __future__ import annotations

import sys
from typing import IO

from tokenlb_proxy.events import UsageEvent
from tokenlb_proxy.stats_log import kong_log_line

__all__ = ["LogSink"]


class LogSink:
    """Writes one JSON line per logged request; flushed per batch, not per line."""

    def __init__(self, target: str) -> None:
        self._owned: IO[bytes] | None = None
        self._out: IO[bytes] | None
        if target == "none":
            self._out = None
        elif target == "stdout":
            self._out = sys.stdout.buffer
        elif target == "stderr":
            self._out = sys.stderr.buffer
        else:
            self._owned = self._out = open(target, "ab")  # noqa: SIM115 - kept open for the run

    def write(self, event: UsageEvent) -> None:
        """Log ``event`` if it closes a request on a target with ``log_statistics``."""
        if self._out is not None and event.log_statistics and event.final:
            self._out.write(kong_log_line(event) + b"\n")

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        self.flush()
        if self._owned is not None:
            self._owned.close()
