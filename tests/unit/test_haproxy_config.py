"""The front load balancer's config: one file for docker compose and ``cluster up``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO
from tokenlb_proxy.bundled import HAPROXY_CONFIG, deploy_text
from tokenlb_proxy.haproxy_config import HaproxyServer, render

COMPOSE_CFG = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()


def compose_servers(count: int) -> list[HaproxyServer]:
    return [HaproxyServer(f"proxy-{i}", f"proxy-{i}:8000", 8001) for i in range(1, count + 1)]


def test_rendering_with_compose_addresses_gives_back_the_compose_file() -> None:
    # So what `cluster up` runs differs from compose only in addresses and replica count.
    assert render(COMPOSE_CFG, ":8080", compose_servers(3)) == COMPOSE_CFG
    assert deploy_text(HAPROXY_CONFIG) == COMPOSE_CFG


def test_local_rendering_changes_only_bind_and_servers() -> None:
    servers = [HaproxyServer(f"proxy-{i}", f"127.0.0.1:{9100 + i}", 9200 + i) for i in (1, 2)]
    local = render(COMPOSE_CFG, "127.0.0.1:18080", servers)
    assert "    bind 127.0.0.1:18080\n" in local
    assert re.findall(r"^\s+server .*$", local, re.M) == [
        "    server proxy-1 127.0.0.1:9101 check port 9201 inter 2s fall 2 rise 1",
        "    server proxy-2 127.0.0.1:9102 check port 9202 inter 2s fall 2 rise 1",
    ]
    unchanged = [
        line for line in COMPOSE_CFG.splitlines() if not re.match(r"\s+(bind|server) ", line)
    ]
    assert [
        line for line in local.splitlines() if not re.match(r"\s+(bind|server) ", line)
    ] == unchanged


def test_streaming_safe_settings() -> None:
    settings = [line.split() for line in COMPOSE_CFG.splitlines() if not line.startswith("#")]
    assert not [words for words in settings if words and words[0] == "compression"]  # buffers
    timeouts = dict(re.findall(r"^\s+timeout (server|client) (\d+)m$", COMPOSE_CFG, re.M))
    assert int(timeouts["server"]) >= 5
    assert int(timeouts["client"]) >= 5


@pytest.mark.parametrize(
    "template",
    [
        "frontend f\n    bind :1\n",
        "backend b\n    server a a:1\n",
        COMPOSE_CFG.replace("    bind :8080\n", ""),
    ],
)
def test_a_template_without_bind_or_server_is_refused(template: str) -> None:
    with pytest.raises(ValueError, match="HAProxy template"):
        render(template, ":1", compose_servers(1))


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(binary).exists(), "haproxy is not installed (apt-get install haproxy)"
    config = tmp_path / "haproxy.cfg"
    servers = [HaproxyServer("proxy-1", "127.0.0.1:1", 2)]
    config.write_text(render(COMPOSE_CFG, "127.0.0.1:18080", servers))  # -c binds nothing
    result = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
