"""One config for the whole fleet: a change on one replica is served by all within 1 s.

Three ``tokenlb proxy`` replicas share a private redis-server and the mock upstream (which
answers with the model it was asked for, so a reply shows which config served it). The
change goes through one replica's Admin API; every replica is then polled with the
OpenAI SDK until it serves the new model, and the slowest must get there within 1 s.

Then Redis is killed and restarted empty on the same port: the replicas put the config
back (the version they knew), and a change made afterwards again reaches all three. A
replica started later serves the fleet's config, not its own ``--config`` file.

Deleting a plugin deletes its balancer state in Redis; replacing one target of a plugin
keeps the counters of the targets that stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import redis
import yaml

from tests.redis_topologies import start_redis_cluster
from tests.support import (
    ManagedProcess,
    free_port,
    http_ok,
    port_open,
    start_mock,
    start_proxies,
    start_redis,
    tokenlb_command,
)
from tokenlb_proxy.keys import BALANCERS_KEY, CONFIG_KEY

pytestmark = pytest.mark.cluster

REPLICAS = 3
PLUGIN = "fleet-balancer"
ROUTE = "fleet"
API_KEY = "sk-fleet-config-key"
#: What the issue promises: every replica serves a change within this long.
PROPAGATION_LIMIT_S = 1.0
#: How long a test waits for something that should take well under a second.
PATIENCE_S = 15.0


@dataclass
class Fleet:
    redis_url: str
    mock_chat_url: str
    replicas: list[tuple[ManagedProcess, int, int]]
    config: Path
    logs: Path
    #: The redis-server (None: a Redis Cluster the test manages).
    redis: ManagedProcess | None = None

    @property
    def redis_port(self) -> int:
        port = urlsplit(self.redis_url).port
        assert port is not None
        return port

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def admin(self, replica: int) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.replicas[replica][2]}", timeout=10)

    def output(self) -> str:
        return "\n".join(
            f"--- {proc.name}\n{proc.output()[-3000:]}" for proc, _, _ in self.replicas
        )


def target(model: str, url: str) -> dict[str, Any]:
    return {
        "route_type": "llm/v1/chat",
        "model": {"provider": "openai", "name": model, "options": {"upstream_url": url}},
        "auth": {"header_name": "Authorization", "header_value": f"Bearer {API_KEY}"},
    }


def fleet_config(mock_chat_url: str, model: str) -> dict[str, Any]:
    plugin = {
        "name": "ai-proxy-advanced",
        "instance_name": PLUGIN,
        "config": {"targets": [target(model, mock_chat_url)]},
    }
    route = {"name": ROUTE, "paths": [f"/{ROUTE}"], "plugins": [plugin]}
    service = {"name": "llm", "url": "http://127.0.0.1:9/unused", "routes": [route]}
    return {"_format_version": "3.0", "services": [service]}


@contextlib.contextmanager
def running_fleet(logs: Path, redis_url: str, replicas: int) -> Iterator[Fleet]:
    """The mock upstream and ``replicas`` proxies on ``redis_url``, seeded with one route
    whose plugin serves ``model-v1``."""
    with contextlib.ExitStack() as stack:
        mock, mock_port = start_mock(logs)
        stack.callback(mock.stop)
        mock_chat_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        config = logs / "kong.yaml"
        config.write_text(yaml.safe_dump(fleet_config(mock_chat_url, "model-v1")))
        started = start_proxies(logs, config, replicas, redis_url=redis_url)
        for proc, _, _ in started:
            stack.callback(proc.stop)
        yield Fleet(redis_url, mock_chat_url, started, config, logs)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    redis_proc, redis_port = start_redis(tmp_path)
    servers = [redis_proc]
    try:
        with running_fleet(tmp_path, f"redis://127.0.0.1:{redis_port}/0", REPLICAS) as fleet:
            fleet.redis = redis_proc
            try:
                yield fleet
            finally:  # the test may have replaced it (killed, started again on its port)
                if fleet.redis not in (None, redis_proc):
                    servers.append(fleet.redis)
    finally:
        for server in servers:
            server.stop()


def change_served_model(fleet: Fleet, replica: int, model: str) -> None:
    """Make the fleet serve ``model``: a PATCH of the plugin on one replica's admin port."""
    with fleet.admin(replica) as admin:
        patch = {"config": {"targets": [target(model, fleet.mock_chat_url)]}}
        response = admin.patch(f"/plugins/{PLUGIN}", json=patch)
        assert response.status_code == 200, response.text


async def seconds_until_served(ports: list[int], model: str, started: float) -> list[float]:
    """For each replica, seconds from ``started`` (``time.monotonic()``) to its first
    reply from ``model``; ``PATIENCE_S`` bounds the wait."""

    async def poll(port: int) -> float:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/{ROUTE}", api_key="client", max_retries=0
        ) as client:
            while time.monotonic() - started < PATIENCE_S:
                reply = await client.chat.completions.create(
                    model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=5
                )
                if reply.model == model:
                    return time.monotonic() - started
                await asyncio.sleep(0.01)
        raise AssertionError(f"replica on port {port} never served {model}")

    return list(await asyncio.gather(*(poll(port) for port in ports)))


def served_everywhere_within(fleet: Fleet, model: str, started: float) -> float:
    """The slowest replica's delay to serve ``model`` (see ``seconds_until_served``)."""
    ports = [port for _, port, _ in fleet.replicas]
    try:
        return max(asyncio.run(seconds_until_served(ports, model, started)))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.output()}") from exc


def wait_for(condition: Any, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {PATIENCE_S} s\n{fleet.output()}")


def status(fleet: Fleet, replica: int) -> dict[str, Any]:
    with fleet.admin(replica) as admin:
        body: dict[str, Any] = admin.get("/status").json()
        return body


def test_a_change_on_one_replica_is_served_by_all_within_a_second(fleet: Fleet) -> None:
    assert served_everywhere_within(fleet, "model-v1", time.monotonic()) < PATIENCE_S
    versions = {status(fleet, i)["config_version"] for i in range(REPLICAS)}
    assert versions == {1}

    started = time.monotonic()
    change_served_model(fleet, 0, "model-v2")
    slowest = served_everywhere_within(fleet, "model-v2", started)
    print(f"\nthe slowest of {REPLICAS} replicas served the PATCH after {slowest:.3f} s")
    assert slowest < PROPAGATION_LIMIT_S, f"the slowest replica took {slowest:.3f} s"
    assert {status(fleet, i)["config_version"] for i in range(REPLICAS)} == {2}

    # Again from another replica: no replica is special.
    started = time.monotonic()
    change_served_model(fleet, 2, "model-v3")
    slowest = served_everywhere_within(fleet, "model-v3", started)
    assert slowest < PROPAGATION_LIMIT_S, f"the slowest replica took {slowest:.3f} s"


def test_the_fleet_restores_an_emptied_redis_and_keeps_following(fleet: Fleet) -> None:
    change_served_model(fleet, 1, "model-v2")
    served_everywhere_within(fleet, "model-v2", time.monotonic())

    assert fleet.redis is not None
    fleet.redis.kill()
    fleet.redis, _ = start_redis(fleet.logs, fleet.redis_port)  # the same port, empty
    client = fleet.redis_client()
    try:
        wait_for(lambda: client.hget(CONFIG_KEY, "version") == "2", "restoring version 2", fleet)
    finally:
        client.close()
    wait_for(
        lambda: all(not status(fleet, i)["degraded"] for i in range(REPLICAS)),
        "every replica rejoining Redis",
        fleet,
    )

    started = time.monotonic()
    change_served_model(fleet, 2, "model-v3")
    slowest = served_everywhere_within(fleet, "model-v3", started)
    assert slowest < PROPAGATION_LIMIT_S, f"the slowest replica took {slowest:.3f} s"
    assert {status(fleet, i)["config_version"] for i in range(REPLICAS)} == {3}

    # Started later, with the original file or none: both serve what Redis holds.
    late = [late_replica(fleet, fleet.config), late_replica(fleet, None)]
    try:
        for proc, port, _ in late:
            replies = asyncio.run(seconds_until_served([port], "model-v3", time.monotonic()))
            assert replies, proc.output()
        assert "only seeds an empty Redis" in late[0][0].output()
    finally:
        for proc, _, _ in late:
            proc.stop()


def late_replica(fleet: Fleet, config: Path | None) -> tuple[ManagedProcess, int, int]:
    port, admin_port = free_port(), free_port()
    args = ["proxy", "--port", str(port), "--admin-port", str(admin_port)]
    args += ["--redis-url", fleet.redis_url]
    if config is not None:
        args += ["--config", str(config)]
    proc = ManagedProcess(f"late-proxy-{port}", tokenlb_command(*args), fleet.logs)
    proc.wait_until(lambda: port_open(port) and http_ok(f"http://127.0.0.1:{admin_port}/status"))
    return proc, port, admin_port


def test_deleting_a_plugin_deletes_its_balancer_state(fleet: Fleet) -> None:
    with fleet.admin(0) as admin:
        route = {"name": "doomed", "paths": ["/doomed"]}
        assert admin.post("/services/llm/routes", json=route).status_code == 201
        body = {
            "name": "ai-proxy-advanced",
            "instance_name": "doomed",
            "config": {"targets": [target("doomed-model", fleet.mock_chat_url)]},
        }
        assert admin.post("/routes/doomed/plugins", json=body).status_code == 201
    balancer = balancer_id(fleet, 0, "doomed-model")
    client = fleet.redis_client()
    try:
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{fleet.replicas[1][1]}/doomed", api_key="c", max_retries=0
        ) as doomed:
            wait_for(lambda: serves(doomed, "doomed-model"), "serving the new plugin", fleet)
        assert balancer in client.smembers(BALANCERS_KEY)
        assert balancer_keys_in_redis(client, balancer)

        with fleet.admin(2) as admin:
            assert admin.delete("/plugins/doomed").status_code == 204
        assert balancer_keys_in_redis(client, balancer) == []
        assert balancer not in client.smembers(BALANCERS_KEY)
        # The balancer that stays keeps its state.
        kept = balancer_id(fleet, 2, "model-v1")
        assert kept in client.smembers(BALANCERS_KEY)
        assert balancer_keys_in_redis(client, kept)
    finally:
        client.close()


def test_replacing_a_target_keeps_the_counters_of_the_targets_that_stay(fleet: Fleet) -> None:
    url = fleet.mock_chat_url
    with fleet.admin(0) as admin:
        patch = {"config": {"targets": [target("stays", url), target("goes", url)]}}
        assert admin.patch(f"/plugins/{PLUGIN}", json=patch).status_code == 200
    wait_for(lambda: models_served(fleet) == {"stays", "goes"}, "serving both targets", fleet)
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{fleet.replicas[0][1]}/{ROUTE}", api_key="c", max_retries=0
    ) as client:
        for _ in range(6):
            client.chat.completions.create(
                model="stays", messages=[{"role": "user", "content": "x"}]
            )
    before = target_rows(fleet, 1)
    assert before["stays"]["requests"] == 6

    with fleet.admin(1) as admin:
        patch = {"config": {"targets": [target("stays", url), target("arrives", url)]}}
        assert admin.patch(f"/plugins/{PLUGIN}", json=patch).status_code == 200
    wait_for(lambda: models_served(fleet) == {"stays", "arrives"}, "serving the new target", fleet)
    for replica in range(REPLICAS):
        after = target_rows(fleet, replica)
        assert after["stays"]["id"] == before["stays"]["id"]
        assert after["stays"]["requests"] == 6
        assert after["arrives"]["requests"] == 0


def serves(client: openai.OpenAI, model: str) -> bool:
    try:
        reply = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "x"}]
        )
    except openai.NotFoundError:
        return False
    return reply.model == model


def balancer_id(fleet: Fleet, replica: int, model: str) -> str:
    """The id of the balancer that serves ``model``, as the replica's /status shows it."""
    for balancer in status(fleet, replica)["balancers"]:
        if any(t["model"] == f"openai/{model}" for t in balancer["targets"]):
            return str(balancer["id"])
    raise AssertionError(f"no balancer serves {model}: {status(fleet, replica)}")


def balancer_keys_in_redis(client: redis.Redis, balancer: str) -> list[str]:
    return sorted(client.scan_iter(match=f"tokenlb:{{{balancer}}}:*"))


def models_served(fleet: Fleet) -> set[str]:
    """The models of the fleet balancer's targets, if every replica agrees on them."""
    seen = {frozenset(target_rows(fleet, i)) for i in range(REPLICAS)}
    return set(next(iter(seen))) if len(seen) == 1 else set()


def target_rows(fleet: Fleet, replica: int) -> dict[str, dict[str, Any]]:
    """model -> its /status row, for the fleet balancer of one replica."""
    for balancer in status(fleet, replica)["balancers"]:
        rows = {t["model"].removeprefix("openai/"): t for t in balancer["targets"]}
        if "doomed-model" not in rows:
            return rows
    raise AssertionError("no fleet balancer")


def test_on_a_redis_cluster_replicas_follow_by_polling(tmp_path: Path) -> None:
    """redis-py's asyncio cluster client has no pub/sub: polling alone keeps the 1 s."""
    nodes = start_redis_cluster(tmp_path)
    try:
        with running_fleet(tmp_path, nodes.url(nodes=2), 2) as fleet:
            started = time.monotonic()
            change_served_model(fleet, 0, "model-v2")
            slowest = served_everywhere_within(fleet, "model-v2", started)
            assert slowest < PROPAGATION_LIMIT_S, f"the slowest replica took {slowest:.3f} s"
    finally:
        nodes.stop()
