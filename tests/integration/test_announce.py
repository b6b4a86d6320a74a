"""Replicas re-announce their balancers, so a Redis that lost its data is repopulated
and aggregators find the event streams again without restarting anything."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.support import start_proxy
from tokenlb_proxy.keys import BALANCERS_KEY, balancer_keys


def test_balancers_are_announced_again_after_redis_lost_them(
    redis_url: str, tmp_path: Path, process_logs: Path
) -> None:
    config = tmp_path / "kong.yaml"
    config.write_text(
        """_format_version: "3.0"
plugins:
- name: ai-proxy-advanced
  instance_name: announced
  config:
    targets:
    - {route_type: llm/v1/chat, model: {provider: openai, name: gpt-4}}
"""
    )
    proxy, _, _ = start_proxy(
        process_logs, config, redis_url=redis_url, env={"TOKENLB_ANNOUNCE_INTERVAL_S": "0.2"}
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.smembers(BALANCERS_KEY) == {"announced"}
        client.flushall()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not client.smembers(BALANCERS_KEY):
            time.sleep(0.05)
        assert client.smembers(BALANCERS_KEY) == {"announced"}
        targets = client.hgetall(balancer_keys("announced").targets)
        assert [t for t in targets.values() if '"openai/gpt-4"' in t]
    finally:
        client.close()
        proxy.stop()
