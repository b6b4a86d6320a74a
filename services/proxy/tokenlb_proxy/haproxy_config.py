"""The front load balancer's config, rendered for local processes from the compose one.

``deploy/haproxy/haproxy.cfg`` is a complete config for docker compose (servers
``proxy-N:8000``, health checks on the admin port 8001). ``tokenlb cluster up`` needs
the same settings with loopback addresses, any number of replicas and per-replica admin
ports: ``render`` rewrites the ``bind`` line and replaces the ``server`` lines with one
per replica, each patterned on the first, so every other setting (timeouts, balance
algorithm, checks) is the compose file's own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HaproxyServer", "render"]

_BIND = re.compile(r"^(?P<indent>\s+)bind \S+(?P<rest>.*)$", re.M)
_SERVER = re.compile(r"^(?P<indent>\s+)server \S+ \S+(?P<rest>.*)$", re.M)
_CHECK_PORT = re.compile(r"\bport \d+")


@dataclass(frozen=True)
class HaproxyServer:
    """One replica as HAProxy sees it."""

    name: str
    #: ``host:port`` of the replica's proxy (data-plane) port.
    address: str
    #: The replica's admin port, where the health check asks ``GET /status``.
    check_port: int


def render(template: str, bind: str, servers: Sequence[HaproxyServer]) -> str:
    """``template`` with its one ``bind`` address and its ``server`` lines replaced."""
    binds = list(_BIND.finditer(template))
    matches = list(_SERVER.finditer(template))
    if len(binds) != 1 or not matches or not servers:
        raise ValueError("the HAProxy template needs exactly one bind line and a server line")
    first, bind_match = matches[0], binds[0]
    block = template[first.start() : matches[-1].end()]
    if len(block.splitlines()) != len(matches) or bind_match.end() > first.start():
        raise ValueError("the HAProxy template's server lines must be together, after bind")
    lines = [
        f"{first['indent']}server {server.name} {server.address}"
        + _CHECK_PORT.sub(f"port {server.check_port}", first["rest"])
        for server in servers
    ]
    out = template[: first.start()] + "\n".join(lines) + template[matches[-1].end() :]
    # The bind line comes before the server lines, so its offsets still hold.
    return (
        out[: bind_match.start()]
        + f"{bind_match['indent']}bind {bind}{bind_match['rest']}"
        + out[bind_match.end() :]
    )
