"""``tokenlb cluster up --demo --replicas 3``, run as users run it, used through HAProxy.

The cluster is a real process tree (redis-server, the mock upstream, three replicas and
the distribution's haproxy); traffic goes through the HAProxy port with the official
OpenAI SDK. Balance is read from the mock's own counts, the spread over replicas from
each replica's ``/metrics``. Needs haproxy installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ManagedProcess, free_port, http_ok, tokenlb_command
from tokenlb_proxy.mock_state import ChatMessage, prompt_profile

pytestmark = pytest.mark.cluster

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
TOKEN_DELAY_MS = 20


@dataclass
class Cluster:
    process: ManagedProcess
    state: dict[str, Any]

    @property
    def front(self) -> str:
        front: str = self.state["front"]
        return front

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.front}/v1", api_key="client-key", max_retries=0, timeout=30
        )

    def mock_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.state['mock_url']}/mock/stats").json()
        return stats

    def replica_requests(self) -> list[float]:
        """``ai_llm_requests_total`` of each replica, summed over its targets."""
        counts = []
        for replica in self.state["replicas"]:
            text = httpx.get(f"{replica['admin_url']}/metrics", timeout=5).text
            counts.append(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == "ai_llm_requests_total"
                )
            )
        return counts


def start_cluster(workdir: Path, *extra: str) -> Cluster:
    """``tokenlb cluster up`` in the background, once its cluster.json is written."""
    state_path = workdir / "cluster.json"
    command = tokenlb_command(
        "cluster", "up", "--demo", "--port", str(free_port()), "--replica-port", "0",
        "--workdir", str(workdir), *extra,
    )  # fmt: skip
    process = ManagedProcess("cluster-up", command, workdir)
    process.wait_until(state_path.exists, timeout=60)
    return Cluster(process, json.loads(state_path.read_text()))


def all_gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("cluster-up"), "--replicas", "3")
    try:
        assert running.state["front"], running.process.output()
        yield running
    finally:
        running.process.stop()


def prompt(index: int) -> str:
    words = 10 + (index * 7) % 50
    return " ".join(WORDS[(index + i) % len(WORDS)] for i in range(words))


def test_balances_through_haproxy_over_all_replicas(cluster: Cluster) -> None:
    before = cluster.mock_stats()["by_model"]
    replicas_before = cluster.replica_requests()

    def ask(index: int) -> str:
        with cluster.client() as client:
            messages: Any = [{"role": "user", "content": prompt(index)}]
            if index % 4 == 0:
                chunks = list(
                    client.chat.completions.create(model="any", messages=messages, stream=True)
                )
                assert any(c.choices and c.choices[0].delta.content for c in chunks)
                return chunks[0].model
            return client.chat.completions.create(model="any", messages=messages).model

    with ThreadPoolExecutor(max_workers=8) as pool:
        served = list(pool.map(ask, range(48)))
    assert set(served) == {"gpt-4", "gpt-4o-mini"}

    after = cluster.mock_stats()["by_model"]
    prompt_tokens = {
        model: after[model]["prompt_tokens"] - before.get(model, {}).get("prompt_tokens", 0)
        for model in ("gpt-4", "gpt-4o-mini")
    }
    # The compose demo config balances prompt tokens over two equal-weight targets.
    low, high = sorted(prompt_tokens.values())
    assert (high - low) / high < 0.2, prompt_tokens

    deadline = time.monotonic() + 5
    while True:  # streamed requests are counted when their stream ends
        per_replica = [
            now - then
            for now, then in zip(cluster.replica_requests(), replicas_before, strict=True)
        ]
        if sum(per_replica) == 48 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(per_replica) == 48
    assert all(count > 0 for count in per_replica), per_replica


def long_prompt() -> str:
    """A prompt the compose demo's mock (seed 0, 8..200 tokens) answers with 60-120
    tokens, so a stream paced at TOKEN_DELAY_MS lasts over a second."""
    for index in range(500):
        text = f"Tell me a long story, number {index}."
        encoded = msgspec.json.encode([ChatMessage(role="user", content=text)])
        if 60 <= prompt_profile(encoded, 0, 8, 200)[1] <= 120:
            return text
    raise AssertionError("no prompt with a long enough answer")


def test_streams_chunk_by_chunk_through_haproxy(cluster: Cluster) -> None:
    mock = cluster.state["mock_url"]
    httpx.post(f"{mock}/mock/control", json={"token_delay_ms": TOKEN_DELAY_MS}).raise_for_status()
    try:
        with cluster.client() as client:
            started = time.perf_counter()
            arrivals = []
            stream = client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": long_prompt()}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.perf_counter() - started)
    finally:
        httpx.post(f"{mock}/mock/control", json={"token_delay_ms": None}).raise_for_status()
    total = arrivals[-1]
    assert total > 1.0  # 60+ tokens at 20 ms each
    assert arrivals[0] < 0.25 * total, arrivals[:3]  # not buffered until the end
    assert len({round(t, 2) for t in arrivals}) >= 10  # and spread over the stream


def test_without_haproxy_it_says_so_runs_replicas_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    running = start_cluster(tmp_path, "--replicas", "1", "--haproxy", str(tmp_path / "none"))
    try:
        assert running.state["front"] is None
        assert "haproxy is not installed" in running.process.output()
        [replica] = running.state["replicas"]
        with openai.OpenAI(base_url=f"{replica['url']}/v1", api_key="k", max_retries=0) as client:
            assert client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hi"}]
            ).usage
        pids = [p["pid"] for p in running.state["processes"]]
        assert len(pids) == 4  # redis, mock, one replica, the aggregator
        running.process.process.send_signal(signal.SIGTERM)
        assert running.process.process.wait(timeout=20) == 0
        assert all_gone(pids)
        assert not http_ok(f"{replica['admin_url']}/status")
    finally:
        running.process.stop()
