"""Process entry point of ``tokenlb aggregator``."""

from __future__ import annotations

import asyncio

from tokenlb_aggregator.settings import AggregatorSettings
from tokenlb_aggregator.sink import LogSink
from tokenlb_aggregator.spans import SpanEmitter, exporter_from_env
from tokenlb_aggregator.worker import Aggregator

__all__ = ["run_aggregator"]


async def _main(settings: AggregatorSettings) -> None:
    exporter = exporter_from_env()
    aggregator = Aggregator(
        settings,
        sink=LogSink(settings.log_sink),
        spans=SpanEmitter(exporter) if exporter is not None else None,
    )
    await aggregator.run()


def run_aggregator(settings: AggregatorSettings) -> None:
    """Run until SIGTERM/SIGINT."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        uvloop.run(_main(settings))
    except ImportError:
        asyncio.run(_main(settings))
