"""``tokenlb config sync | dump | apply`` end to end, against a real redis-server.

Each command runs as a user runs it (a subprocess of the installed entry point); what it
stored is read back from Redis through the repository the replicas use.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.support import REPO, stored_config, tokenlb_command
from tokenlb_proxy.config import parse_document
from tokenlb_proxy.config.entities import normalize
from tokenlb_proxy.control.documents import same_config
from tokenlb_proxy.keys import CONFIG_KEY

SEED = REPO / "tests" / "data" / "seed"
API_KEY = "sk-cli-secret-0123456789"
CONSUMER_KEY = "alice-secret-key-0123"

KONG_YAML = f"""
_format_version: "3.0"
services:
- name: llm
  url: http://127.0.0.1:9/v1
  routes:
  - name: chat
    paths: [/chat]
  - name: old
    paths: [/old]
consumers:
- username: alice
  keyauth_credentials:
  - key: {CONSUMER_KEY}
plugins:
- name: ai-proxy-advanced
  route: chat
  config:
    targets:
    - model: {{provider: openai, name: gpt-4o}}
      route_type: llm/v1/chat
      auth:
        header_name: Authorization
        header_value: Bearer ${{{{ env "DECK_KEY" }}}}
"""


def run(*args: str, redis_url: str | None) -> subprocess.CompletedProcess[str]:
    """``tokenlb ARGS [--redis-url URL]`` with the decK variables the files use."""
    # Not the replicas' secrets: vault references are resolved where they are served.
    unset = ("TOKENLB_REDIS_URL", "OPENAI_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(DECK_KEY=API_KEY, DECK_OPENAI_API_KEY=API_KEY)
    command = tokenlb_command(*args)
    if redis_url is not None:
        command += ["--redis-url", redis_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def flat(text: str) -> dict[str, Any]:
    return normalize(parse_document(text, {"DECK_KEY": API_KEY, "DECK_OPENAI_API_KEY": API_KEY}))


@pytest.fixture
def kong_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "kong.yaml"
    path.write_text(KONG_YAML)
    return path


def test_sync_stores_the_file_and_prints_the_difference(kong_yaml: Path, redis_url: str) -> None:
    result = run("config", "sync", str(kong_yaml), redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "create service llm",
        "create route chat",
        "create route old",
        "create consumer alice",
        f"create keyauth_credential {_credential_id(redis_url)} (consumer alice)",
        "create plugin ai-proxy-advanced (route chat)",
        "Summary: 6 created, 0 updated, 0 deleted (stored as version 1)",
    ]
    assert API_KEY not in result.stdout + result.stderr
    assert CONSUMER_KEY not in result.stdout + result.stderr
    config = stored_config(redis_url)
    assert config is not None
    assert config.version == 1
    assert same_config(config.document, flat(KONG_YAML))


def test_sync_of_an_unchanged_file_stores_nothing(kong_yaml: Path, redis_url: str) -> None:
    assert run("config", "sync", str(kong_yaml), redis_url=redis_url).returncode == 0
    before = stored_config(redis_url)
    again = run("config", "sync", str(kong_yaml), redis_url=redis_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "Summary: 0 created, 0 updated, 0 deleted (nothing to store; Redis holds version 1)"
    ]
    assert stored_config(redis_url) == before


def test_sync_updates_and_deletes_and_keeps_creation_times(
    kong_yaml: Path, redis_url: str, tmp_path: Path
) -> None:
    assert run("config", "sync", str(kong_yaml), redis_url=redis_url).returncode == 0
    first = stored_config(redis_url)
    assert first is not None
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        KONG_YAML.replace("  - name: old\n    paths: [/old]\n", "").replace("gpt-4o", "gpt-4.1")
    )
    result = run("config", "sync", str(changed), redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "delete route old",
        "update plugin ai-proxy-advanced (route chat)",
        "Summary: 0 created, 1 updated, 1 deleted (stored as version 2)",
    ]
    second = stored_config(redis_url)
    assert second is not None
    (plugin_before,) = first.document["plugins"]
    (plugin_after,) = second.document["plugins"]
    assert plugin_after["id"] == plugin_before["id"]
    assert plugin_after["created_at"] == plugin_before["created_at"]
    assert plugin_after["config"]["targets"][0]["model"]["name"] == "gpt-4.1"
    assert second.document["services"] == first.document["services"]  # timestamps too


def test_dry_run_prints_the_difference_and_stores_nothing(kong_yaml: Path, redis_url: str) -> None:
    result = run("config", "sync", "--dry-run", str(kong_yaml), redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert "create plugin ai-proxy-advanced (route chat)" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        "Summary: 6 created, 0 updated, 0 deleted (dry run, nothing stored; Redis holds version 0)"
    )
    assert stored_config(redis_url) is None


def test_an_invalid_file_lists_its_errors_and_stores_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        KONG_YAML.replace("route: chat", "route: nowhere").replace(
            "route_type: llm/v1/chat", "route_type: llm/v1/chat\n      weight: -1"
        )
    )
    result = run("config", "sync", str(bad), redis_url=redis_url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{bad}: 1 error(s), nothing stored" in result.stderr
    assert "plugins[0].route: no route 'nowhere'" in result.stderr
    assert stored_config(redis_url) is None
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(CONFIG_KEY) == 0
    finally:
        client.close()


def test_dump_writes_a_kong_yaml_that_syncs_back_to_the_same_config(
    kong_yaml: Path, redis_url: str, tmp_path: Path
) -> None:
    assert run("config", "sync", str(kong_yaml), redis_url=redis_url).returncode == 0
    printed = run("config", "dump", redis_url=redis_url)
    assert printed.returncode == 0, printed.stderr
    config = stored_config(redis_url)
    assert config is not None
    assert same_config(flat(printed.stdout), config.document)
    (service,) = yaml.safe_load(printed.stdout)["services"]
    assert sorted(route["name"] for route in service["routes"]) == ["chat", "old"]

    dump = tmp_path / "dump.yaml"
    written = run("config", "dump", "-o", str(dump), redis_url=redis_url)
    assert written.returncode == 0, written.stderr
    assert dump.read_text() == printed.stdout
    again = run("config", "sync", str(dump), redis_url=redis_url)
    assert again.stdout.splitlines()[-1].startswith("Summary: 0 created, 0 updated, 0 deleted")


def test_vault_references_are_stored_and_dumped_unresolved(tmp_path: Path, redis_url: str) -> None:
    """The CLI's machine need not hold the replicas' secrets (OPENAI_API_KEY is not set
    here): references are checked, stored as written, and dumped as written."""
    vaulted = tmp_path / "vault.yaml"
    reference = "{vault://env/openai-api-key}"
    vaulted.write_text(KONG_YAML.replace('${{ env "DECK_KEY" }}', reference))
    synced = run("config", "sync", str(vaulted), redis_url=redis_url)
    assert synced.returncode == 0, synced.stderr
    config = stored_config(redis_url)
    assert config is not None
    auth = config.document["plugins"][0]["config"]["targets"][0]["auth"]
    assert auth["header_value"] == f"Bearer {reference}"
    dumped = run("config", "dump", redis_url=redis_url).stdout
    assert f"Bearer {reference}" in dumped

    unsupported = tmp_path / "unsupported.yaml"
    unsupported.write_text(KONG_YAML.replace('${{ env "DECK_KEY" }}', "{vault://aws/key}"))
    refused = run("config", "sync", str(unsupported), redis_url=redis_url)
    assert refused.returncode == 1
    assert "vault 'aws' is not supported yet" in refused.stderr


def test_dump_of_an_empty_redis_is_an_empty_kong_yaml(redis_url: str) -> None:
    result = run("config", "dump", redis_url=redis_url)
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout) == {"_format_version": "3.0"}


def test_apply_upserts_the_seed_manifests_by_name(redis_url: str) -> None:
    result = run("config", "apply", "-f", str(SEED / "kubernetes-plugin.yaml"), redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "create plugin ai-proxy-advanced (instance ai-proxy-advanced, global)",
        "Summary: 1 created, 0 updated, 0 deleted (stored as version 1)",
    ]
    first = stored_config(redis_url)
    assert first is not None
    (plugin,) = first.document["plugins"]
    assert plugin["instance_name"] == "ai-proxy-advanced"
    assert plugin["config"]["balancer"]["tokens_count_strategy"] == "prompt-tokens"
    assert plugin["config"]["balancer"]["retries"] == 5  # Kong's defaults filled in

    # The cluster plugin of the same name (labelled global) is the same instance.
    cluster = SEED / "kubernetes-cluster-plugin.yaml"
    result = run("config", "apply", "-f", str(cluster), redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "Summary: 0 created, 0 updated, 0 deleted (stored as version 2)"
    )
    second = stored_config(redis_url)
    assert second is not None
    assert second.document["plugins"] == first.document["plugins"]


def test_apply_binds_a_manifest_to_a_route(kong_yaml: Path, redis_url: str, tmp_path: Path) -> None:
    no_plugin = tmp_path / "routes.yaml"
    no_plugin.write_text(KONG_YAML.split("plugins:", maxsplit=1)[0])
    assert run("config", "sync", str(no_plugin), redis_url=redis_url).returncode == 0
    result = run(
        "config",
        "apply",
        "-f",
        str(SEED / "kubernetes-cluster-plugin.yaml"),
        "--route",
        "old",
        redis_url=redis_url,
    )
    assert result.returncode == 0, result.stderr
    assert "create plugin ai-proxy-advanced (instance ai-proxy-advanced, route old)" in (
        result.stdout
    )
    config = stored_config(redis_url)
    assert config is not None
    route = next(r for r in config.document["routes"] if r["name"] == "old")
    (plugin,) = config.document["plugins"]
    assert plugin["route"] == {"id": route["id"]}


def test_apply_refuses_what_it_cannot_place(tmp_path: Path, redis_url: str) -> None:
    unbound = tmp_path / "unbound.yaml"
    unbound.write_text(
        (SEED / "kubernetes-cluster-plugin.yaml").read_text().replace("global: 'true'", "{}")
    )
    result = run("config", "apply", "-f", str(unbound), redis_url=redis_url)
    assert result.returncode == 1
    assert "give --service, --route, --consumer or --consumer-group" in result.stderr

    seed = str(SEED / "kubernetes-plugin.yaml")
    missing = run("config", "apply", "-f", seed, "--service", "nowhere", redis_url=redis_url)
    assert missing.returncode == 1
    assert "--service: no service 'nowhere'" in missing.stderr

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(
        (SEED / "kubernetes-plugin.yaml").read_text().replace("lowest-usage", "fastest")
    )
    refused = run("config", "apply", "-f", str(invalid), redis_url=redis_url)
    assert refused.returncode == 1
    assert "plugins[0].config.balancer.algorithm" in refused.stderr
    assert stored_config(redis_url) is None


def test_config_commands_need_a_redis_url(kong_yaml: Path) -> None:
    result = run("config", "sync", str(kong_yaml), redis_url=None)
    assert result.returncode == 2
    assert "--redis-url (or TOKENLB_REDIS_URL) is required" in result.stderr


def _credential_id(redis_url: str) -> str:
    config = stored_config(redis_url)
    assert config is not None
    (credential,) = config.document["keyauth_credentials"]
    return str(credential["id"])
