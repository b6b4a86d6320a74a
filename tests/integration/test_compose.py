"""docker-compose.yml stays honest: every tokenlb command in it is real and starts.

There is no Docker engine on the machines that run these tests, so the compose file is
run the way the cluster tests run the fleet: the same commands, as local processes, with
the service host names and ports mapped to loopback.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.otlp_receiver import OtlpReceiver, otlp_receiver
from tests.support import REPO, ManagedProcess, free_port, http_ok, port_open, tokenlb_command
from tokenlb_proxy.cli import build_parser

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
TOKENLB_SERVICES = {name: s for name, s in SERVICES.items() if "build" in s}


def _env(service: dict[str, Any], hosts: dict[str, str]) -> dict[str, str]:
    """Compose environment with ``${VAR:-default}`` resolved and service hosts mapped."""
    env = {}
    for key, value in (service.get("environment") or {}).items():
        text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
        for compose_host, local in hosts.items():
            text = text.replace(compose_host, local)
        env[key] = text
    return env


def test_every_tokenlb_command_is_a_real_subcommand() -> None:
    parser = build_parser()
    assert TOKENLB_SERVICES, "no tokenlb services in docker-compose.yml"
    for name, service in TOKENLB_SERVICES.items():
        args = parser.parse_args(service["command"])
        assert args.command in ("proxy", "mock-upstream", "aggregator"), name


def test_compose_cluster_commands_start_and_serve(tmp_path: Path) -> None:
    processes: list[ManagedProcess] = []
    hosts: dict[str, str] = {}
    with otlp_receiver() as jaeger:
        # Jaeger's OTLP port, played by a real OTLP receiver.
        assert SERVICES["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
        hosts["jaeger:4318"] = f"127.0.0.1:{jaeger.port}"
        _run_compose_commands(tmp_path, processes, hosts, jaeger)


def _run_compose_commands(
    tmp_path: Path, processes: list[ManagedProcess], hosts: dict[str, str], jaeger: OtlpReceiver
) -> None:
    try:
        redis_port = free_port()
        redis_args = SERVICES["redis"]["command"]
        assert redis_args[0] == "redis-server"
        binary = shutil.which("redis-server")
        assert binary is not None
        redis = ManagedProcess(
            "compose-redis",
            [binary, *redis_args[1:], "--port", str(redis_port), "--bind", "127.0.0.1"],
            tmp_path,
        )
        processes.append(redis)
        redis.wait_until(lambda: port_open(redis_port))
        hosts["redis:6379"] = f"127.0.0.1:{redis_port}"

        proxy_ports: list[int] = []
        admin_ports: list[int] = []
        order = {"mock-upstream": 0, "proxy": 1, "aggregator": 2}
        ordered = sorted(TOKENLB_SERVICES.items(), key=lambda item: order[item[1]["command"][0]])
        for name, service in ordered:
            command, ports = _localize(service, hosts, tmp_path)
            proc = ManagedProcess(
                f"compose-{name}", tokenlb_command(*command), tmp_path, _env(service, hosts)
            )
            processes.append(proc)
            if command[0] == "aggregator":
                proc.wait_until(lambda: _aggregators_alive(admin_ports[0]))
            elif command[0] == "mock-upstream":
                port = ports["--port"]
                proc.wait_until(lambda p=port: http_ok(f"http://127.0.0.1:{p}/health"))
                hosts["mock-upstream:9000"] = f"127.0.0.1:{port}"
            else:
                admin = ports["--admin-port"]
                proc.wait_until(lambda a=admin: http_ok(f"http://127.0.0.1:{a}/status"))
                status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=5).json()
                assert status["store"] == "redis"
                assert status["redis"]["reachable"] is True
                proxy_ports.append(ports["--port"])
                admin_ports.append(admin)

        assert len(proxy_ports) >= 2
        for port in proxy_ports:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="client", max_retries=0
            )
            reply = client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hello compose"}]
            )
            assert reply.usage is not None
            assert reply.usage.prompt_tokens > 0
            client.close()
        # The aggregator turned those requests into traces for Jaeger.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(jaeger.snapshot()) < 2 * len(proxy_ports):
            time.sleep(0.1)
        spans = jaeger.snapshot()
        assert len(spans) >= 2 * len(proxy_ports)
        assert {service for service, _ in spans} == {"tokenlb"}
    finally:
        for proc in reversed(processes):
            proc.stop()


def _aggregators_alive(admin_port: int) -> bool:
    status = httpx.get(f"http://127.0.0.1:{admin_port}/status", timeout=5).json()
    return bool(status["aggregators"]["alive"])


def _localize(
    service: dict[str, Any], hosts: dict[str, str], workdir: Path
) -> tuple[list[str], dict[str, int]]:
    """The service's command with loopback hosts, free ports and local config paths."""
    command = list(service["command"])
    ports: dict[str, int] = {}
    for index, arg in enumerate(command):
        if arg in ("--port", "--admin-port"):
            ports[arg] = free_port()
            command[index + 1] = str(ports[arg])
        elif arg in ("--host", "--admin-host"):
            command[index + 1] = "127.0.0.1"
    for index, arg in enumerate(command):
        for compose_host, local in hosts.items():
            command[index] = command[index].replace(compose_host, local)
        if arg == "--config":
            command[index + 1] = str(_local_config(service, command[index + 1], hosts, workdir))
    return command, ports


def _local_config(
    service: dict[str, Any], container_path: str, hosts: dict[str, str], workdir: Path
) -> Path:
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if target == container_path:
            text = (REPO / source).read_text()
            for compose_host, local in hosts.items():
                text = text.replace(compose_host, local)
            path = workdir / Path(container_path).name
            path.write_text(text)
            return path
    pytest.fail(f"{container_path} is not mounted into the service")
