"""Running a replica: the proxy and admin apps on one event loop, one uvicorn each.

uvicorn's own signal capture is per server; with two servers in one process we take the
signals ourselves and ask both to stop, so SIGTERM drains in-flight requests on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from tokenlb_proxy.app import create_admin_app, create_proxy_app
from tokenlb_proxy.runtime import open_runtime
from tokenlb_proxy.settings import ProxySettings, redact_url

__all__ = ["run_proxy"]

log = logging.getLogger("tokenlb")

#: Seconds in-flight requests get to finish after SIGTERM.
GRACEFUL_SHUTDOWN_S = 30


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to ``run_proxy``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: object, host: str, port: int) -> _Server:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="auto",
        http="auto",
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=75,
    )
    return _Server(config)


async def serve(settings: ProxySettings) -> None:
    """Serve until SIGINT/SIGTERM; ``ConfigError`` when there is no config to serve."""
    runtime = await open_runtime(settings)
    proxy = _server(create_proxy_app(runtime), settings.host, settings.port)
    admin = _server(create_admin_app(runtime), settings.admin_host, settings.admin_port)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        proxy.should_exit = True
        admin.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    store = f"redis {redact_url(settings.redis_url)}" if settings.redis_url else "embedded store"
    log.info(
        "tokenlb proxy on http://%s:%d, admin on http://%s:%d, %s, config version %d (%s)",
        settings.host,
        settings.port,
        settings.admin_host,
        settings.admin_port,
        store,
        runtime.served.version,
        runtime.gateway.version,
    )
    await asyncio.gather(proxy.serve(), admin.serve())


def run_proxy(settings: ProxySettings) -> None:
    """Blocking entry point of ``tokenlb proxy``."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        uvloop.run(serve(settings))
    except ImportError:
        asyncio.run(serve(settings))
