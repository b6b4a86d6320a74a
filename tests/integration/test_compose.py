"""docker-compose.yml stays honest: its topology is the one ``tokenlb cluster up`` runs.

There is no Docker engine where these tests run. So ``tokenlb cluster up --demo`` (the
same topology as local processes) is started, and every compose service's command must
be one that cluster up ran (cluster.json lists them), up to the addresses, ports and
paths that differ between containers and loopback. The port wiring is checked too:
every ``host:port`` in a command or mounted config names a service listening there.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import yaml

from tests.support import REPO, ManagedProcess, free_port, tokenlb_command
from tokenlb_proxy.bundled import COMPOSE_CONFIG, HAPROXY_CONFIG
from tokenlb_proxy.cli import build_parser

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
TOKENLB_SERVICES = {name: s for name, s in SERVICES.items() if "build" in s}
#: Option values that are addresses or paths: containers and loopback differ there.
PLACES = {
    "--host": "<host>",
    "--admin-host": "<host>",
    "--port": "<port>",
    "--admin-port": "<port>",
    "--redis-url": "<redis>",
    "--url": "<front>",
    "--config": "<kong.yaml>",
    "-f": "<haproxy.cfg>",
}
#: Options only the local run needs: in a container the defaults are right.
LOCAL_ONLY = {"redis-server": {"--port", "--bind", "--dir"}}
#: Services cluster up cannot run from the distribution's packages: Jaeger. Its wiring is
#: checked below and the aggregator's OTLP export is tested against a real OTLP receiver
#: (tests/integration/test_tracing.py).
EXTERNAL = {"jaeger": {4318, 16686}}
RUNNABLE = {name: s for name, s in SERVICES.items() if name not in EXTERNAL}


def resolve(value: str) -> str:
    """Compose ``${VAR:-default}`` (nested too) resolved to its default."""
    while True:
        resolved = re.sub(r"\$\{[A-Z_]+:-([^${}]*)\}", r"\1", value)
        if resolved == value:
            return value
        value = resolved


def program_and_args(service: dict[str, Any]) -> tuple[str, list[str]]:
    """What the service's container runs, as program and arguments."""
    command = [str(arg) for arg in service["command"]]
    if "build" in service:  # our image: ENTRYPOINT ["tokenlb"]
        return "tokenlb", command
    if command[0] == "haproxy":  # the haproxy image's entrypoint adds these two
        return "haproxy", ["-W", "-db", *command[1:]]
    return command[0], command[1:]


def normalized(program: str, args: list[str]) -> tuple[str, ...]:
    out: list[str] = [program]
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in LOCAL_ONLY.get(program, ()):
            skip = True
            continue
        out.append(arg)
        if arg in PLACES and index + 1 < len(args):
            out.append(PLACES[arg])
            skip = True
    return tuple(out)


def test_every_tokenlb_command_is_a_real_subcommand() -> None:
    parser = build_parser()
    assert TOKENLB_SERVICES, "no tokenlb services in docker-compose.yml"
    for name, service in TOKENLB_SERVICES.items():
        args = parser.parse_args(service["command"])
        assert args.command in ("proxy", "mock-upstream", "load", "aggregator"), name


def test_every_compose_service_is_one_cluster_up_runs(tmp_path: Path) -> None:
    proxies = [n for n, s in SERVICES.items() if s.get("command", [None])[0] == "proxy"]
    [load] = [s for s in SERVICES.values() if s.get("command", [None])[0] == "load"]
    requests = load["command"][load["command"].index("--requests") + 1]
    command = tokenlb_command(
        "cluster", "up", "--demo", "--replicas", str(len(proxies)), "--load", requests,
        "--port", str(free_port()), "--replica-port", "0", "--workdir", str(tmp_path),
    )  # fmt: skip
    cluster = ManagedProcess("compose-cluster", command, tmp_path)
    try:
        cluster.wait_until(lambda: "requests to http" in cluster.output(), timeout=90)
        state = json.loads((tmp_path / "cluster.json").read_text())
        ran = Counter(normalized(p["program"], p["args"]) for p in state["processes"])
        wanted = Counter(normalized(*program_and_args(s)) for s in RUNNABLE.values())
        missing = wanted - ran
        assert not missing, f"compose services cluster up does not run: {missing}"
        assert "failed" not in cluster.output()  # the load generator's 300 all answered

        with openai.OpenAI(base_url=f"{state['front']}/v1", api_key="k", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hello compose"}]
            )
        assert reply.usage is not None
        for replica in state["replicas"]:
            status = httpx.get(f"{replica['admin_url']}/status", timeout=5).json()
            assert (status["store"], status["redis"]["reachable"]) == ("redis", True)
            assert status["aggregators"]["alive"], "the compose aggregator is not running"
        cluster.process.send_signal(signal.SIGTERM)
        assert cluster.process.wait(timeout=30) == 0
    finally:
        cluster.stop()


def test_mounted_files_are_the_ones_cluster_up_uses() -> None:
    mounts = {
        resolve(volume).split(":")[1]: resolve(volume).split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
    }
    assert mounts["/etc/tokenlb/kong.yaml"] == f"./deploy/{COMPOSE_CONFIG}"
    assert mounts["/usr/local/etc/haproxy/haproxy.cfg"] == f"./deploy/{HAPROXY_CONFIG}"
    for service in RUNNABLE.values():
        args = program_and_args(service)[1]
        for option in ("--config", "-f"):
            if option in args:
                assert args[args.index(option) + 1] in mounts, service["command"]


def listening_ports() -> dict[str, set[int]]:
    """Ports each compose service listens on inside its container."""
    ports: dict[str, set[int]] = dict(EXTERNAL)
    haproxy_cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for name, service in RUNNABLE.items():
        program, args = program_and_args(service)
        if program == "redis-server":
            ports[name] = {6379}
        elif program == "haproxy":
            ports[name] = {int(p) for p in re.findall(r"^\s+bind \S*:(\d+)", haproxy_cfg, re.M)}
        else:
            ports[name] = {
                int(args[i + 1]) for i, a in enumerate(args) if a in ("--port", "--admin-port")
            }
    return ports


def test_every_address_points_at_a_service_listening_there() -> None:
    ports = listening_ports()
    references: list[tuple[str, int]] = []
    for service in SERVICES.values():
        for value in (service.get("environment") or {}).values():
            if str(value).startswith("http://"):
                url = urlsplit(resolve(str(value)))
                assert url.hostname is not None, value
                assert url.port is not None, value
                references.append((url.hostname, url.port))
    for service in RUNNABLE.values():
        for arg in program_and_args(service)[1]:
            if arg.startswith(("redis://", "http://")):
                url = urlsplit(arg)
                assert url.hostname is not None, arg
                assert url.port is not None, arg
                references.append((url.hostname, url.port))
    haproxy_cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for host, port, check in re.findall(r"server \S+ (\S+):(\d+) check port (\d+)", haproxy_cfg):
        references += [(host, int(port)), (host, int(check))]
    kong = (REPO / "deploy" / "compose" / "kong.yaml").read_text()
    references += [(h, int(p)) for h, p in re.findall(r"http://([a-z0-9-]+):(\d+)/", kong)]
    assert {host for host, _ in references} >= {
        "redis",
        "haproxy",
        "mock-upstream",
        "proxy-1",
        "jaeger",
    }
    for host, port in references:
        assert port in ports.get(host, set()), f"{host}:{port} is not a listening service"
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            container_port = int(str(mapping).rsplit(":", 1)[1])
            assert container_port in ports[name], (name, mapping)


def test_aggregator_exports_to_jaeger_over_otlp() -> None:
    aggregator = SERVICES["aggregator"]
    assert aggregator["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert SERVICES["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "jaeger" in aggregator["depends_on"]
