"""Process logging for every ``tokenlb`` command: text for people, JSON lines for pipelines.

``TOKENLB_LOG_FORMAT=json`` writes one JSON object per line on stderr with ``ts`` (UTC,
RFC 3339, milliseconds), ``level``, ``logger`` and ``message`` (and ``exception`` with
the traceback when there is one), so a log shipper needs no parsing rules. The
per-request ``log_statistics`` records keep their own channel, stdout, in both formats:
they already are one JSON object per line, shaped like Kong's ``ai.proxy`` record.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from tokenlb_proxy.settings import LogSettings

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record."""

    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        line: dict[str, str] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self._encoder.encode(line).decode()


def configure_logging(settings: LogSettings) -> None:
    """Root handler on stderr in the chosen format; analytics records on stdout."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else _text_formatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # One JSON line per request, on stdout, for log pipelines (log_statistics).
    analytics = logging.getLogger("tokenlb.analytics")
    if not analytics.handlers:
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(logging.Formatter("%(message)s"))
        analytics.addHandler(out)
    analytics.propagate = False
    # httpx logs every request at INFO: noise, and measurably slow on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT)
