"""Listening sockets, bound before a server starts anything else.

``tokenlb proxy`` binds its proxy and admin addresses before it reads Redis or starts
either uvicorn server, and ``tokenlb mock-upstream`` binds its one address the same way.
Left to uvicorn, a port already in use is found only once both servers are starting:
the other one runs for a moment, logs that it is running, and the process dies with
three tracebacks and uvicorn's exit code 3. Bound here first, the address in use stops
the command with one line naming it, and nothing was started that must be stopped.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

__all__ = ["CannotListen", "bind_all", "format_address"]


class CannotListen(Exception):
    """An address could not be bound; ``str()`` is the line an operator reads."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {format_address(host, port)}: {reason}")
        self.host = host
        self.port = port


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets as URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_all(addresses: Sequence[tuple[str, int]]) -> list[socket.socket]:
    """A bound TCP socket per ``(host, port)``, in order; ``CannotListen`` for the first
    address that cannot be bound, after closing the ones already bound.

    Bound as uvicorn binds (IPv6 when the host has a colon, ``SO_REUSEADDR`` so a restart
    need not wait for old connections in TIME_WAIT), not yet listening: uvicorn listens
    when its server starts, so until then a client is refused rather than left waiting.
    """
    bound: list[socket.socket] = []
    try:
        for host, port in addresses:
            bound.append(_bind(host, port))
    except CannotListen:
        for sock in bound:
            sock.close()
        raise
    return bound


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port past 65535
        sock.close()
        raise CannotListen(host, port, _reason(exc)) from None
    return sock


def _reason(exc: OSError | OverflowError) -> str:
    """The system's words for the error ("address already in use"), lower-cased to read
    as the end of a sentence."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return reason[:1].lower() + reason[1:]
