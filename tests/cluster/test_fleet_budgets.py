"""Fleet-wide budgets (the ``limits`` extension): 4 replicas at high concurrency never put a
target over its budget by more than one request's tokens in any minute.

Two targets: ``metered`` may use 20,000 tokens a minute, ``counted`` may serve 60 requests
a minute. Clients send heavy-tailed prompts with ``max_tokens: 200`` through 4 replicas
sharing one Redis, 32 at a time, and back off 200 ms after a 429. Ground truth is the
client's record of every answered request (its start and end times, model and ``usage``),
checked against the mock upstream's own per-model counts:

1. a burst exhausts both budgets; the gateway answers 429 with ``Retry-After`` and
   OpenAI's error shape once both are full;
2. load resumes 57 s later and runs past the minute, while the first burst's reservations
   leave the window one by one: capacity comes back as they leave, never sooner.

Every set of answered requests whose start times lie within 58 s of each other (each took
under 2 s, so their reservations lie within one 60 s window) must hold at most 20,000
tokens (+ one request's) on ``metered`` and 60 requests on ``counted``. The same burst on 4
replicas that each keep their own budget (what per-pod limits do) is measured beside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.cluster.fleet import (
    balanced_route,
    chat_target,
    declarative_config,
    heavy_tailed_prompts,
    running_fleet,
)
from tokenlb_proxy.tokens import get_counter

pytestmark = pytest.mark.cluster

REPLICAS = 4
CONCURRENCY = 32
BACKOFF_S = 0.2
TOKENS_PER_MINUTE = 20_000
REQUESTS_PER_MINUTE = 60
MAX_TOKENS = 200
#: Answered requests whose starts lie this close fall in one budget window (see above).
MEASURED_WINDOW_S = 58.0
MAX_DURATION_S = 2.0


def _config(mock_port: int) -> dict[str, Any]:
    targets = [
        chat_target("metered", mock_port, limits={"tokens_per_minute": TOKENS_PER_MINUTE}),
        chat_target("counted", mock_port, limits={"requests_per_minute": REQUESTS_PER_MINUTE}),
    ]
    return declarative_config([balanced_route("budgets", {"algorithm": "lowest-usage"}, targets)])


@dataclass(frozen=True)
class Answer:
    start: float
    end: float
    model: str
    tokens: int


@dataclass
class Record:
    answers: list[Answer] = field(default_factory=list)
    refusals: list[httpx.Response] = field(default_factory=list)


@dataclass
class Fleet:
    mock: httpx.Client
    shared: list[int]
    local: list[int]

    def served(self) -> dict[str, tuple[int, int]]:
        """(requests, total tokens) per model, as the upstream counted them."""
        rows = self.mock.get("/mock/stats").json()["by_model"]
        return {model: (row["requests"], row["total_tokens"]) for model, row in rows.items()}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet-budgets")
    with running_fleet(
        logs, _config, shared=REPLICAS, local=REPLICAS, mocks=[("--latency-ms", "5")]
    ) as started:
        yield Fleet(started.mocks[0], started.shared_ports, started.local_ports)


def _load(ports: Sequence[int], prompts: Sequence[str], *, until: float) -> Record:
    """Send ``prompts`` in turn (cycling) through ``ports`` until every prompt went once
    and ``until`` (a ``time.monotonic()``) has passed, ``CONCURRENCY`` at a time."""
    record = Record()

    async def run() -> None:
        counter = iter(range(10**9))
        async with httpx.AsyncClient(
            timeout=10, limits=httpx.Limits(max_connections=2 * CONCURRENCY)
        ) as client:

            async def worker() -> None:
                while True:
                    n = next(counter)
                    if n >= len(prompts) and time.monotonic() >= until:
                        return
                    port = ports[n % len(ports)]
                    body = {
                        "model": "any",
                        "max_tokens": MAX_TOKENS,
                        "messages": [{"role": "user", "content": prompts[n % len(prompts)]}],
                    }
                    start = time.monotonic()
                    response = await client.post(
                        f"http://127.0.0.1:{port}/budgets/v1/chat/completions", json=body
                    )
                    end = time.monotonic()
                    if response.status_code == 429:
                        record.refusals.append(response)
                        await asyncio.sleep(BACKOFF_S)
                        continue
                    assert response.status_code == 200, response.text
                    reply = response.json()
                    usage = reply["usage"]["total_tokens"]
                    record.answers.append(Answer(start, end, reply["model"], usage))

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    asyncio.run(run())
    return record


def _worst_windows(answers: Sequence[Answer]) -> dict[str, tuple[int, int]]:
    """Per model: the most tokens and the most requests among answers whose start times
    lie within ``MEASURED_WINDOW_S`` of each other."""
    worst: dict[str, tuple[int, int]] = {}
    for model in {a.model for a in answers}:
        mine = sorted((a for a in answers if a.model == model), key=lambda a: a.start)
        most_tokens = most_requests = 0
        for i, first in enumerate(mine):
            inside = [a for a in mine[i:] if a.start < first.start + MEASURED_WINDOW_S]
            most_tokens = max(most_tokens, sum(a.tokens for a in inside))
            most_requests = max(most_requests, len(inside))
        worst[model] = (most_tokens, most_requests)
    return worst


def _tokens(answers: Sequence[Answer], model: str) -> int:
    return sum(a.tokens for a in answers if a.model == model)


def test_budgets_hold_for_the_whole_fleet_in_every_window(fleet: Fleet) -> None:
    prompts = heavy_tailed_prompts(400, seed=7)
    counter = get_counter()
    largest = max(counter.count_text(p) for p in prompts) + 10 + MAX_TOKENS

    # Per-replica budgets first (their own balancer state, on their own processes).
    fleet.mock.post("/mock/reset").raise_for_status()
    local = _load(fleet.local, prompts * 2, until=0)
    per_replica = (
        _tokens(local.answers, "metered"),
        sum(1 for a in local.answers if a.model == "counted"),
    )

    # 1. The fleet-wide burst.
    fleet.mock.post("/mock/reset").raise_for_status()
    began = time.monotonic()
    burst = _load(fleet.shared, prompts[:300], until=0)
    burst_tokens = _tokens(burst.answers, "metered")
    burst_requests = sum(1 for a in burst.answers if a.model == "counted")
    assert burst_tokens <= TOKENS_PER_MINUTE
    assert burst_requests == REQUESTS_PER_MINUTE
    assert burst.refusals, "the burst must exhaust both budgets"
    refusal = burst.refusals[-1]
    error = refusal.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in ("tokens", "requests")
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(refusal.headers["retry-after"]) <= 60

    # 2. Load again from 57 s to 70 s: the first burst's reservations leave the window.
    time.sleep(max(0.0, began + 57 - time.monotonic()))
    later = _load(fleet.shared, prompts[300:], until=began + 70)

    answers = burst.answers + later.answers
    assert max(a.end - a.start for a in answers) < MAX_DURATION_S
    # What the clients were told they used is what the upstream served.
    served = fleet.served()
    for model in ("metered", "counted"):
        mine = [a for a in answers if a.model == model]
        assert served.get(model, (0, 0)) == (len(mine), sum(a.tokens for a in mine))
    # Requests came back only as the burst left the window: counted answered nothing
    # within 60 s of the burst's start (its first reservation was made after that)...
    assert all(a.end >= began + 59.9 for a in later.answers if a.model == "counted")
    # ...and capacity did come back on both.
    regained = [a for a in later.answers if a.start > began + 60]
    assert any(a.model == "metered" for a in regained)
    assert any(a.model == "counted" for a in regained)

    worst = _worst_windows(answers)
    print(
        f"\nbudget_worst_minute: metered tokens={worst['metered'][0]} "
        f"(limit {TOKENS_PER_MINUTE}, largest request ~{largest}), counted requests="
        f"{worst['counted'][1]} (limit {REQUESTS_PER_MINUTE}); answered {len(answers)}, "
        f"refused {len(burst.refusals) + len(later.refusals)}; "
        f"per-replica budgets in one burst: {per_replica[0]} tokens, {per_replica[1]} requests"
    )
    assert worst["metered"][0] <= TOKENS_PER_MINUTE + largest
    assert worst["counted"][1] <= REQUESTS_PER_MINUTE
    # Per-replica budgets let the fleet take about one budget per replica.
    assert per_replica[0] > 2 * TOKENS_PER_MINUTE
    assert per_replica[1] > 2 * REQUESTS_PER_MINUTE
