"""``tokenlb stats`` against a real fleet: a replica that announced its balancer, with
and without an aggregator running."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, ManagedProcess, start_proxy, tokenlb_command

SEED = REPO / "tests" / "data" / "seed"


def stats(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tokenlb_command("stats", "--redis-url", redis_url, *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def replica(process_logs: Path, redis_url: str) -> Iterator[None]:
    """A replica serving the seed's global plugin (lowest-usage by prompt tokens), which
    announces its balancer to Redis as it starts."""
    env = {**os.environ, "DECK_OPENAI_API_KEY": "sk-stats-cli-test"}
    proc, _, _ = start_proxy(process_logs, SEED / "kong-global.yaml", redis_url=redis_url, env=env)
    yield
    proc.stop()


@pytest.mark.usefixtures("replica")
def test_without_an_aggregator_stats_says_so_above_the_table(redis_url: str) -> None:
    result = stats(redis_url)

    assert result.returncode == 0, result.stderr
    (notice,) = result.stderr.splitlines()
    assert notice.startswith("tokenlb stats: no aggregator is running on this Redis")
    assert notice.endswith(f"start one with: tokenlb aggregator --redis-url {redis_url}")
    # The table is still there, its share of what this balancer counts.
    assert "balancer global: lowest-usage by prompt-tokens" in result.stdout
    assert "share of prompt tokens" in result.stdout

    as_json = stats(redis_url, "--json")
    assert as_json.returncode == 0
    assert as_json.stderr == result.stderr
    report = json.loads(as_json.stdout)
    assert report["aggregators"]["alive"] == []
    (balancer,) = report["balancers"]
    assert (balancer["algorithm"], balancer["tokens_count_strategy"]) == (
        "lowest-usage",
        "prompt-tokens",
    )
    assert balancer["share_of"] == "prompt_tokens"


@pytest.mark.usefixtures("replica")
def test_with_an_aggregator_running_stats_has_nothing_to_warn_about(
    process_logs: Path, redis_url: str
) -> None:
    aggregator = ManagedProcess(
        "stats-aggregator", tokenlb_command("aggregator", "--redis-url", redis_url), process_logs
    )
    try:
        aggregator.wait_until(
            lambda: json.loads(stats(redis_url, "--json").stdout)["aggregators"]["alive"] != []
        )
        result = stats(redis_url)
        assert result.returncode == 0
        assert result.stderr == ""
        assert "share of prompt tokens" in result.stdout
    finally:
        aggregator.stop()
