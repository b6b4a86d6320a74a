"""The config repositories: compare-and-set, conflicts and announcements.

Both repositories keep the same contract (a version-stamped document replaced whole, only
by a writer that read the current version); the Redis one is checked against a real
redis-server, including racing writers and the announcement on the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from tokenlb_proxy.control.manager import ConfigManager
from tokenlb_proxy.control.redis_repository import RedisRepository
from tokenlb_proxy.control.repository import (
    ConfigConflict,
    ConfigRepository,
    LocalRepository,
    StoredConfig,
)
from tokenlb_proxy.keys import CONFIG_CHANNEL, CONFIG_KEY
from tokenlb_proxy.plan import Gateway

DOC: dict[str, Any] = {"_format_version": "3.0", "services": [{"id": "s1", "name": "llm"}]}


@pytest.fixture(params=["local", "redis"])
async def repository(request: pytest.FixtureRequest) -> AsyncIterator[ConfigRepository]:
    if request.param == "local":
        yield LocalRepository()
        return
    url = request.getfixturevalue("redis_url")
    repo = RedisRepository.from_url(url)
    yield repo
    await repo.close()


async def test_empty_repository_has_version_zero(repository: ConfigRepository) -> None:
    assert await repository.load() is None
    assert await repository.version() == 0


async def test_save_bumps_the_version_and_keeps_the_document(
    repository: ConfigRepository,
) -> None:
    assert await repository.save(DOC, 0) == 1
    assert await repository.load() == StoredConfig(1, DOC)
    changed = {**DOC, "routes": [{"id": "r1", "paths": ["/chat"]}]}
    assert await repository.save(changed, 1) == 2
    assert await repository.version() == 2
    assert await repository.load() == StoredConfig(2, changed)


async def test_a_stale_writer_is_refused_and_changes_nothing(
    repository: ConfigRepository,
) -> None:
    await repository.save(DOC, 0)
    await repository.save({**DOC, "routes": []}, 1)
    with pytest.raises(ConfigConflict):
        await repository.save({"_format_version": "3.0"}, 1)
    with pytest.raises(ConfigConflict):
        await repository.save({"_format_version": "3.0"}, 0)
    assert await repository.load() == StoredConfig(2, {**DOC, "routes": []})


async def test_racing_changes_through_the_manager_are_all_kept(
    repository: ConfigRepository,
) -> None:
    """Twelve writers each add one service at once: compare-and-set makes the losers
    re-read and re-apply, so no change is lost and every version is used once."""
    applied: list[int] = []

    async def apply(_: Gateway, stored: StoredConfig) -> None:
        applied.append(stored.version)

    def compile_(_: dict[str, Any]) -> Gateway:
        return Gateway(routes=(), balancers=(), version="test")

    manager = ConfigManager(repository, compile_, apply)

    def add(name: str) -> Any:
        def change(document: dict[str, Any]) -> str:
            document.setdefault("services", []).append({"name": name})
            return name

        return change

    names = [f"svc-{i}" for i in range(12)]
    assert await asyncio.gather(*(manager.update(add(n)) for n in names)) == names
    stored = await repository.load()
    assert stored is not None
    assert stored.version == 12
    assert sorted(s["name"] for s in stored.document["services"]) == sorted(names)
    assert sorted(applied) == list(range(1, 13))


async def test_a_change_that_raises_stores_nothing(repository: ConfigRepository) -> None:
    await repository.save(DOC, 0)

    def compile_(_: dict[str, Any]) -> Gateway:
        raise AssertionError("a refused change is never compiled")

    async def apply(_: Gateway, __: StoredConfig) -> None:
        raise AssertionError("a refused change is never applied")

    def refuse(_: dict[str, Any]) -> None:
        raise KeyError("no such plugin")

    with pytest.raises(KeyError):
        await ConfigManager(repository, compile_, apply).update(refuse)
    assert await repository.load() == StoredConfig(1, DOC)


# Redis only -------------------------------------------------------------------------------


@pytest.fixture
async def redis_repository(redis_url: str) -> AsyncIterator[RedisRepository]:
    repo = RedisRepository.from_url(redis_url)
    yield repo
    await repo.close()


async def test_the_document_lives_in_one_hash(
    redis_repository: RedisRepository, redis_url: str
) -> None:
    await redis_repository.save(DOC, 0)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await client.hgetall(CONFIG_KEY) == {
            "version": "1",
            "document": '{"_format_version":"3.0","services":[{"id":"s1","name":"llm"}]}',
        }
    finally:
        await client.aclose()


async def test_each_save_announces_its_version(redis_repository: RedisRepository) -> None:
    pubsub = redis_repository.subscribe()
    assert pubsub is not None
    await pubsub.subscribe(CONFIG_CHANNEL)
    try:
        await redis_repository.save(DOC, 0)
        with pytest.raises(ConfigConflict):
            await redis_repository.save(DOC, 0)
        await redis_repository.save(DOC, 1)
        heard = [await _next_message(pubsub), await _next_message(pubsub)]
        assert heard == ["1", "2"]
        assert await pubsub.get_message(timeout=0.2) is None  # the refused save was silent
    finally:
        await pubsub.aclose()


async def test_restore_refills_an_empty_redis_under_the_old_version(
    redis_repository: RedisRepository,
) -> None:
    assert await redis_repository.restore(StoredConfig(7, DOC)) == 7
    assert await redis_repository.load() == StoredConfig(7, DOC)
    with pytest.raises(ConfigConflict):
        await redis_repository.restore(StoredConfig(9, {"_format_version": "3.0"}))
    assert await redis_repository.save({**DOC, "routes": []}, 7) == 8
    # A document never stored (version 0) is restored as version 1.
    await redis_repository.client.delete(CONFIG_KEY)
    assert await redis_repository.restore(StoredConfig(0, DOC)) == 1


async def test_save_works_after_the_script_cache_is_flushed(
    redis_repository: RedisRepository,
) -> None:
    await redis_repository.save(DOC, 0)
    await redis_repository.client.script_flush()
    assert await redis_repository.save(DOC, 1) == 2


async def test_a_cluster_client_polls_instead_of_subscribing() -> None:
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 7000)])
    try:
        assert RedisRepository(client).subscribe() is None
    finally:
        await client.aclose()


async def _next_message(pubsub: Any) -> str:
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return str(message["data"])
    raise AssertionError("no announcement within 5 s")
