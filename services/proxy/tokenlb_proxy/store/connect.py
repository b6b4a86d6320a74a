"""From a Redis URL to a client: one server, a Redis Cluster, or a master Sentinel watches.

    redis://[[user]:password@]host[:port][/db][?option=value&...]      one server
    rediss://...                                                       the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+cluster://[[user]:password@]host[:port][,host[:port]...][?option=value&...]
    rediss+cluster://...
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?...]
    rediss+sentinel://...

The first three are redis-py's own URLs. A ``+cluster`` URL lists one or more nodes of a
Redis Cluster (the client discovers the rest); keys of one balancer share a hash tag, so
every script runs on one shard. A ``+sentinel`` URL lists Sentinels and names the
monitored master (``service``); the client asks them where the master is and follows
failovers. Credentials in a ``+cluster`` / ``+sentinel`` URL are those of the data nodes;
Sentinels are reached with the same timeouts and TLS setting, without a password unless
the query says ``sentinel_password=...``. Query options are redis-py's connection options
(``ssl_cert_reqs``, ``client_name``, ...).

Every client gets short timeouts and at most one immediate retry, after a connection
error only: a dead Redis must turn into the local fallback, not into a stalled request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "RedisClient",
    "RedisTarget",
    "connect_redis",
    "parse_redis_url",
]

#: What ``connect_redis`` returns; both speak the same commands for the keys tokenlb uses.
RedisClient = aioredis.Redis | RedisCluster

#: ``+cluster`` / ``+sentinel`` scheme -> the plain scheme its options are parsed with.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
_DEFAULT_PORT = 6379
_DEFAULT_SENTINEL_PORT = 26379


def _retry() -> Retry:
    """One immediate retry after a connection error (a pooled connection Redis closed when
    it restarted; the retry opens a fresh one). Timeouts are not retried: the command
    may have run, and waiting twice on a hung Redis is what the fallback avoids."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL points at."""

    kind: Literal["server", "cluster", "sentinel"]
    #: (host, port) of the cluster nodes or Sentinels; empty for one server.
    nodes: list[tuple[str, int]] = field(default_factory=list)
    #: redis-py connection options (credentials, TLS, query options).
    options: dict[str, Any] = field(default_factory=dict)
    #: The master's name and database, for Sentinel.
    service: str = ""
    db: int = 0


def parse_redis_url(url: str) -> RedisTarget:
    """Check ``url`` and say what it points at; ``ValueError`` says what is wrong."""
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        nodes, path, options = _split_multi_host(url, CLUSTER_SCHEMES[scheme], _DEFAULT_PORT)
        if path.strip("/") not in ("", "0") or int(options.pop("db", 0) or 0) != 0:
            raise ValueError("a Redis Cluster has only database 0; drop the /db from the URL")
        return RedisTarget("cluster", nodes, options)
    if scheme in SENTINEL_SCHEMES:
        nodes, path, options = _split_multi_host(
            url, SENTINEL_SCHEMES[scheme], _DEFAULT_SENTINEL_PORT
        )
        service, _, db = path.strip("/").partition("/")
        if not service or "/" in db or (db and not db.isdigit()):
            raise ValueError(
                "a +sentinel URL names the monitored master: "
                "redis+sentinel://host:26379[,host:26379]/<service>[/<db>]"
            )
        return RedisTarget("sentinel", nodes, options, service, int(db or 0))
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "a Redis URL starts with redis://, rediss://, unix://, redis+cluster://, "
            "rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
        )
    parse_url(url)  # redis-py's own forms: raises ValueError on a bad option
    return RedisTarget("server")


def connect_redis(url: str, *, timeout_s: float = 1.0) -> RedisClient:
    """A pooled client for ``url`` (see the module docstring for the forms)."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30,
        "retry": _retry(),
    }
    options = dict(target.options)
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            **options,
            **common,
        )
    if target.kind == "sentinel":
        sentinel_kwargs = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "password": options.pop("sentinel_password", None),
            "username": options.pop("sentinel_username", None),
        }
        if options.get("ssl"):
            sentinel_kwargs.update({k: v for k, v in options.items() if k.startswith("ssl")})
        sentinel = Sentinel(target.nodes, sentinel_kwargs=sentinel_kwargs, **options, **common)
        client: aioredis.Redis = sentinel.master_for(target.service, db=target.db)
        return client
    return aioredis.Redis.from_url(url, **common)


def _split_multi_host(
    url: str, plain_scheme: str, default_port: int
) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """(host, port) pairs, the path, and redis-py's options parsed from the rest."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for host in hosts.split(","):
        node = urlsplit(f"//{host.strip()}")
        if not node.hostname:
            raise ValueError(f"no host in {host!r} of the Redis URL")
        nodes.append((unquote(node.hostname), node.port or default_port))
    # redis-py parses credentials, TLS and query options from a one-host URL.
    query = f"?{parts.query}" if parts.query else ""
    options: dict[str, Any] = dict(parse_url(f"{plain_scheme}://{userinfo}{at}localhost{query}"))
    for name in ("host", "port", "path"):
        options.pop(name, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return nodes, parts.path, options
