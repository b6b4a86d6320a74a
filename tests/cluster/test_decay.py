"""Usage decays with its half-life whether zero, one or three aggregators run.

Aggregators roll the decay epoch (rescaling every stored score) as often as they like;
that must change no decayed value and no ordering. `tokenlb stats` reports each target's
usage and when it was measured; between reports it must halve per half-life within 1%.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import ManagedProcess, start_mock, start_proxy, start_redis, tokenlb_command
from tokenlb_proxy.keys import balancer_keys

pytestmark = pytest.mark.cluster

HALF_LIFE_S = 2.0
ROLLING_AGGREGATOR = {
    # Roll every 100 ms once a tenth of a half-life has passed: far more often than
    # production, so any error in rolling would show.
    "TOKENLB_AGGREGATOR_ROLL_INTERVAL_MS": "100",
    "TOKENLB_AGGREGATOR_ROLL_MIN_HALF_LIVES": "0.1",
    "TOKENLB_AGGREGATOR_DISCOVER_INTERVAL_MS": "100",
}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[str, int]]:
    processes: list[ManagedProcess] = []
    try:
        redis_proc, redis_port = start_redis(tmp_path)
        processes.append(redis_proc)
        mock, mock_port = start_mock(tmp_path)
        processes.append(mock)
        url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        config = tmp_path / "kong.yaml"
        config.write_text(
            f"""_format_version: "3.0"
plugins:
- name: ai-proxy-advanced
  instance_name: decay
  config:
    balancer: {{algorithm: lowest-usage, usage_half_life: {HALF_LIFE_S}}}
    targets:
    - {{route_type: llm/v1/chat, model: {{provider: openai, name: heavy,
        options: {{upstream_url: "{url}"}}}}}}
    - {{route_type: llm/v1/chat, model: {{provider: openai, name: light,
        options: {{upstream_url: "{url}"}}}}}}
"""
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        proxy, port, _ = start_proxy(tmp_path, config, redis_url=redis_url)
        processes.append(proxy)
        yield redis_url, port
    finally:
        for proc in reversed(processes):
            proc.stop()


def _stats(redis_url: str) -> tuple[float, dict[str, float]]:
    reply = subprocess.run(
        tokenlb_command("stats", "--redis-url", redis_url, "--json"),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    (balancer,) = json.loads(reply.stdout)["balancers"]
    usage = {row["model"]: row["usage"] for row in balancer["targets"]}
    return balancer["usage_measured_at_ms"], usage


@pytest.mark.parametrize("aggregators", [0, 1, 3])
def test_usage_halves_per_half_life(
    fleet: tuple[str, int], tmp_path: Path, aggregators: int
) -> None:
    redis_url, port = fleet
    with httpx.Client(timeout=10) as client:
        for model, count in (("heavy", 3), ("light", 1)):
            for i in range(count):
                response = client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": f"q{i}"}]},
                )
                assert response.status_code == 200
    workers = [
        ManagedProcess(
            f"aggregator-{i}",
            tokenlb_command("aggregator", "--redis-url", redis_url, "--log-sink", "none"),
            tmp_path,
            env=ROLLING_AGGREGATOR,
        )
        for i in range(aggregators)
    ]
    meta = balancer_keys("decay").meta
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        time.sleep(0.3)  # settles are in the background; let the last one land
        epoch_before = float(client.hget(meta, "epoch_ms") or 0)
        first_at, first = _stats(redis_url)
        assert first["openai/heavy"] > first["openai/light"] > 0
        deadline = time.monotonic() + 2.2 * HALF_LIFE_S
        samples = 0
        while time.monotonic() < deadline:
            time.sleep(0.4)
            at, usage = _stats(redis_url)
            expected = 2 ** (-(at - first_at) / 1000 / HALF_LIFE_S)
            for model, value in usage.items():
                assert value / first[model] == pytest.approx(expected, rel=0.01), model
            # The order of targets, and their ratio, hold at every instant.
            ratio = usage["openai/heavy"] / usage["openai/light"]
            assert ratio == pytest.approx(first["openai/heavy"] / first["openai/light"], rel=0.01)
            samples += 1
        assert samples >= 3
        assert all(w.alive() for w in workers)
        # With aggregators the epoch really moved (the scores were rescaled) meanwhile.
        rolled = float(client.hget(meta, "epoch_ms") or 0) > epoch_before
        assert rolled == (aggregators > 0)
    finally:
        client.close()
        for worker in workers:
            worker.stop()
