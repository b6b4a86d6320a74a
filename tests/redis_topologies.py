"""Real Redis topologies for tests: a 3-master Redis Cluster, and a Sentinel-watched master.

Built from the same ``redis-server`` binary the other tests use (``redis-server
--cluster-enabled yes`` and ``redis-server <conf> --sentinel``), on free loopback ports,
without persistence, logs beside the other processes'.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support import ManagedProcess, free_port, port_open, start_redis

__all__ = ["RedisClusterNodes", "SentinelSetup", "start_redis_cluster", "start_sentinel"]

READY_TIMEOUT_S = 30.0
#: A cluster node also listens on its port + 10000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10_000


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000, at most 65535) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 65_535 - CLUSTER_BUS_OFFSET)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class RedisClusterNodes:
    """A running cluster: one process per master."""

    processes: list[ManagedProcess]
    ports: list[int]
    log_dir: Path

    def url(self, *, nodes: int | None = None) -> str:
        """A ``redis+cluster://`` URL listing the first ``nodes`` masters (all by default)."""
        listed = self.ports[: nodes or len(self.ports)]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in listed)

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        client = redis.Redis(port=self.ports[0], decode_responses=True)
        try:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        finally:
            client.close()
        raise LookupError(f"no master serves slot {slot}")

    def keyslot(self, key: str) -> int:
        client = redis.Redis(port=self.ports[0], decode_responses=True)
        try:
            return int(client.execute_command("CLUSTER KEYSLOT", key))
        finally:
            client.close()

    def restart(self, index: int) -> None:
        """Start master ``index`` again (after a kill): empty, but its nodes.conf keeps
        its identity and slots, so it rejoins the cluster as the same master."""
        self.processes[index].stop()
        self.processes[index] = _start_node(self.log_dir, self.ports[index])
        _wait_for(lambda: all(_cluster_ok(p) for p in self.ports), "the cluster to heal")

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _start_node(log_dir: Path, port: int) -> ManagedProcess:
    node_dir = log_dir / f"cluster-{port}"
    node_dir.mkdir(exist_ok=True)
    process, _ = start_redis(
        log_dir,
        port,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(node_dir / "nodes.conf"),
        "--cluster-node-timeout",
        "2000",
    )
    return process


def start_redis_cluster(log_dir: Path, masters: int = 3) -> RedisClusterNodes:
    """``masters`` cluster-enabled redis-servers joined with ``redis-cli --cluster create``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
    processes: list[ManagedProcess] = []
    ports: list[int] = []
    try:
        for _ in range(masters):
            port = free_cluster_port()
            processes.append(_start_node(log_dir, port))
            ports.append(port)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait_for(lambda: all(_cluster_ok(p) for p in ports), "the cluster to form")
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return RedisClusterNodes(processes, ports, log_dir)


def _cluster_ok(port: int) -> bool:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
        return bool(info.get("cluster_state") == "ok")
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class SentinelSetup:
    """A master, its replica, and one Sentinel watching them as ``service``."""

    master: ManagedProcess
    master_port: int
    replica: ManagedProcess
    replica_port: int
    sentinel: ManagedProcess
    sentinel_port: int
    service: str

    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def current_master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_port, decode_responses=True)
        try:
            _, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)
        finally:
            client.close()

    def stop(self) -> None:
        for process in (self.sentinel, self.replica, self.master):
            process.stop()


def start_sentinel(log_dir: Path, service: str = "tokenlb") -> SentinelSetup:
    """A master, a replica of it, and a Sentinel (quorum 1) that fails over within ~2 s."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    started: list[ManagedProcess] = []
    try:
        master, master_port = start_redis(log_dir, None, "--repl-diskless-sync-delay", "0")
        started.append(master)
        replica, replica_port = start_redis(
            log_dir, None, "--replicaof", "127.0.0.1", str(master_port)
        )
        started.append(replica)
        _wait_for(lambda: _replica_linked(replica_port), "the replica to sync")
        sentinel_port = free_port()
        conf = log_dir / f"sentinel-{sentinel_port}.conf"  # Sentinel rewrites it
        conf.write_text(
            "\n".join(
                [
                    f"port {sentinel_port}",
                    "bind 127.0.0.1",
                    f"dir {log_dir}",
                    f"sentinel monitor {service} 127.0.0.1 {master_port} 1",
                    f"sentinel down-after-milliseconds {service} 1000",
                    f"sentinel failover-timeout {service} 5000",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            )
        )
        sentinel = ManagedProcess(
            f"sentinel-{sentinel_port}", [binary, str(conf), "--sentinel"], log_dir
        )
        started.append(sentinel)
        sentinel.wait_until(lambda: port_open(sentinel_port))
    except BaseException:
        for process in started:
            process.stop()
        raise
    return SentinelSetup(
        master, master_port, replica, replica_port, sentinel, sentinel_port, service
    )


def _replica_linked(port: int) -> bool:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        return bool(client.info("replication").get("master_link_status") == "up")
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_for(ready: object, what: str) -> None:
    assert callable(ready)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")
