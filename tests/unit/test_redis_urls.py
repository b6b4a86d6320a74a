"""Redis URLs: one server, Redis Cluster and Sentinel forms become the right clients.

Nothing connects here (redis-py clients connect lazily); the topologies themselves are
exercised for real in tests/cluster (test_redis_cluster.py, test_redis_sentinel.py).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from tokenlb_proxy.cli import main
from tokenlb_proxy.settings import redact_url
from tokenlb_proxy.store.connect import connect_redis


async def test_a_plain_url_is_one_server_with_short_timeouts_and_one_retry() -> None:
    client = connect_redis("redis://:secret@10.0.0.5:6380/2", timeout_s=0.5)
    try:
        assert isinstance(client, aioredis.Redis)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("10.0.0.5", 6380, 2)
        assert kwargs["password"] == "secret"
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5
        assert kwargs["retry"].get_retries() == 1
    finally:
        await client.aclose()


async def test_a_cluster_url_lists_startup_nodes() -> None:
    client = connect_redis("redis+cluster://app:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002")
    try:
        assert isinstance(client, RedisCluster)
        nodes = sorted(client.nodes_manager.startup_nodes)
        assert nodes == ["10.0.0.1:7000", "10.0.0.2:6379", "::1:7002"]
        assert client.connection_kwargs["username"] == "app"
        assert client.connection_kwargs["password"] == "pw"
        assert client.connection_kwargs["decode_responses"] is True
        assert client.retry.get_retries() == 1
    finally:
        await client.aclose()


async def test_a_tls_cluster_url_uses_tls() -> None:
    client = connect_redis("rediss+cluster://10.0.0.1:7000?ssl_cert_reqs=none")
    try:
        assert isinstance(client, RedisCluster)
        assert client.connection_kwargs["connection_class"] is SSLConnection
        assert client.connection_kwargs["ssl_cert_reqs"] == "none"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url", ["redis+cluster://10.0.0.1:7000/1", "redis+cluster://10.0.0.1:7000?db=3"]
)
def test_a_cluster_has_only_database_zero(url: str) -> None:
    with pytest.raises(ValueError, match="only database 0"):
        connect_redis(url)


async def test_a_sentinel_url_names_sentinels_service_and_db() -> None:
    url = "redis+sentinel://:datapw@10.0.0.1,10.0.0.2:26380/mymaster/3?sentinel_password=s3"
    client = connect_redis(url)
    try:
        assert isinstance(client, aioredis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 3
        assert pool.connection_kwargs["password"] == "datapw"
        sentinels = pool.sentinel_manager.sentinels
        addresses = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in sentinels
        ]
        assert addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
        assert all(s.connection_pool.connection_kwargs["password"] == "s3" for s in sentinels)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://10.0.0.1", "redis+sentinel://10.0.0.1/svc/x", "redis+sentinel://h/a/1/2"],
)
def test_a_sentinel_url_must_name_the_master(url: str) -> None:
    with pytest.raises(ValueError, match="names the monitored master"):
        connect_redis(url)


def test_passwords_of_multi_host_urls_are_redacted() -> None:
    assert redact_url("redis+cluster://app:pw@h1:7000,h2:7001") == (
        "redis+cluster://app:***@h1:7000,h2:7001"
    )
    assert redact_url("redis+sentinel://:pw@h1,h2/svc") == "redis+sentinel://:***@h1,h2/svc"


@pytest.mark.parametrize("command", ["proxy", "aggregator", "stats"])
def test_commands_refuse_a_bad_redis_url_with_a_clear_message(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, "--redis-url", "redis+sentinel://:hunter2@h1:26379"]
    if command == "proxy":
        args += ["--config", "unused.yaml"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"tokenlb {command}: invalid Redis URL redis+sentinel://:***@h1:26379" in err
    assert "names the monitored master" in err
    assert "hunter2" not in err
