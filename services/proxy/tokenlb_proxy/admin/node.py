"""``GET /`` and ``GET /plugins/enabled``: Kong's node information, with tokenlb's facts.

Tools read ``GET /`` before anything else (decK and go-kong read ``version`` and
``configuration.database``; ``"off"`` would make them treat the node as DB-less Kong,
whose entity endpoints refuse writes, which tokenlb's do not). The answer keeps Kong's
shape (``tagline``, ``version``, ``hostname``, ``node_id``, ``plugins``,
``configuration``) and says what is true of this replica: tokenlb's version, the plugins
it implements, the settings it runs with.

``configuration`` is an allow-list, not Kong's copy of every setting with the sensitive
ones masked: a setting added later stays out of it until someone decides it is safe to
show, so the Redis URL (which may hold a password) and the admin token never appear.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from tokenlb_proxy import __version__
from tokenlb_proxy.config.plugins import PLUGIN_SCHEMAS
from tokenlb_proxy.settings import ProxySettings

__all__ = ["NodeInfo", "enabled_plugins", "node_info", "public_configuration"]


@dataclass(frozen=True)
class NodeInfo:
    """What ``GET /`` tells about this process, fixed when it starts."""

    #: Kong keeps its node id across restarts in a file; a replica here has no state of
    #: its own, so the id names the process (stable for its lifetime).
    node_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    hostname: str = field(default_factory=socket.gethostname)
    configuration: dict[str, Any] = field(default_factory=dict)


def public_configuration(settings: ProxySettings) -> dict[str, Any]:
    """The settings ``GET /`` shows, under Kong's names where Kong has the setting."""
    return {
        # Kong's "postgres" or "off"; here where the fleet's config is kept.
        "database": "redis" if settings.redis_url else "memory",
        "declarative_config": settings.config_path or None,
        "proxy_listen": [f"{settings.host}:{settings.port}"],
        "admin_listen": [f"{settings.admin_host}:{settings.admin_port}"],
        "log_level": settings.log_level.lower(),
        # Kong Enterprise's "on" when the Admin API wants a Kong-Admin-Token header.
        "rbac": "on" if settings.admin_token else "off",
        "max_upstream_connections": settings.max_upstream_connections,
        "usage_events": settings.usage_events,
        "redis_timeout_s": settings.redis_timeout_s,
        "config_poll_interval_s": settings.config_poll_interval_s,
        "announce_interval_s": settings.announce_interval_s,
    }


def node_info(node: NodeInfo, document: dict[str, Any]) -> dict[str, Any]:
    """``GET /``; ``document``: the stored config, whose plugins are "enabled in cluster"
    (Kong: the distinct names of every plugin entity, in the order they are stored)."""
    in_use = list(dict.fromkeys(str(p.get("name")) for p in document.get("plugins") or ()))
    return {
        "tagline": "Welcome to tokenlb",
        "version": __version__,
        "hostname": node.hostname,
        "node_id": node.node_id,
        "plugins": {
            "available_on_server": {name: {"version": __version__} for name in PLUGIN_SCHEMAS},
            "enabled_in_cluster": in_use,
        },
        "configuration": node.configuration,
    }


def enabled_plugins() -> dict[str, list[str]]:
    """``GET /plugins/enabled``: the plugins this node can run (Kong: ``loaded_plugins``)."""
    return {"enabled_plugins": sorted(PLUGIN_SCHEMAS)}
