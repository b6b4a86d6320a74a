"""Running a replica: the proxy and admin apps on one event loop, one uvicorn each.

Both addresses are bound first (``listen.py``), before Redis is read or either server
starts, so an address in use stops the replica with one line and nothing half-started.
uvicorn's own signal capture is per server; with two servers in one process we take the
signals ourselves and ask both to stop, so SIGTERM drains in-flight requests on both. A
server that stops on its own (its start-up failed) stops the other one too: a replica
serves both ports or neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from tokenlb_proxy.app import create_admin_app, create_proxy_app
from tokenlb_proxy.listen import bind_all, format_address
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


async def serve(
    settings: ProxySettings, proxy_socket: socket.socket, admin_socket: socket.socket
) -> None:
    """Serve on the bound sockets until SIGINT/SIGTERM; ``ConfigError`` when there is no
    config to serve."""
    runtime = await open_runtime(settings)
    proxy = _server(create_proxy_app(runtime), settings.host, settings.port)
    admin = _server(create_admin_app(runtime), settings.admin_host, settings.admin_port)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        proxy.should_exit = True
        admin.should_exit = True

    async def run(server: _Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    store = f"redis {redact_url(settings.redis_url)}" if settings.redis_url else "embedded store"
    log.info(
        "tokenlb proxy on http://%s, admin on http://%s, %s, config version %d (%s)",
        _bound_address(proxy_socket),
        _bound_address(admin_socket),
        store,
        runtime.served.version,
        runtime.gateway.version,
    )
    await asyncio.gather(run(proxy, proxy_socket), run(admin, admin_socket))


def _bound_address(sock: socket.socket) -> str:
    """Where ``sock`` listens, with the port the system chose for port 0."""
    host, port = sock.getsockname()[:2]
    return format_address(str(host), int(port))


def run_proxy(settings: ProxySettings) -> None:
    """Blocking entry point of ``tokenlb proxy``; ``CannotListen`` (before anything
    started) when the proxy or admin address cannot be bound."""
    proxy_socket, admin_socket = bind_all(
        [(settings.host, settings.port), (settings.admin_host, settings.admin_port)]
    )
    try:
        try:
            import uvloop  # noqa: PLC0415 - optional speed-up
        except ImportError:
            asyncio.run(serve(settings, proxy_socket, admin_socket))
        else:
            uvloop.run(serve(settings, proxy_socket, admin_socket))
    finally:
        proxy_socket.close()
        admin_socket.close()
