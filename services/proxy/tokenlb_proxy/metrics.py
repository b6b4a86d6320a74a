"""Prometheus metrics of one replica, served as text on the admin port's ``GET /metrics``.

Counted in-process on the hot path with plain attributes (one event loop, so no locks)
and never in Redis: counting must cost nothing next to the request, and a scrape must
work while Redis is down. Each replica reports its own counts; Prometheus sums them.

The AI metrics keep Kong's names, label names (``ai_provider``, ``ai_model``) and
``token_type`` values (``prompt_tokens``, ``completion_tokens``, ``total_tokens``), so
dashboards built for Kong's AI metrics read tokenlb unchanged; ``balancer`` (plugin id)
and ``target`` (target id) are added so the balance itself is visible. Every label value
comes from the compiled config's ids, provider and model name, never from auth fields,
so a key cannot end up in a label.

The text format is written here (about a hundred lines) instead of depending on
``prometheus-client``: the project's runtime dependencies are fixed, and the hot path
here is one dict lookup and a few additions. The tests parse the output with
``prometheus-client``'s own parser.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from tokenlb_proxy import __version__
from tokenlb_proxy.keys import BalancerKeys
from tokenlb_proxy.plan import BalancerPlan, Gateway, UpstreamTarget
from tokenlb_proxy.rollups import MinuteRollup
from tokenlb_proxy.store.base import (
    Algorithm,
    Candidate,
    Selection,
    Settlement,
    TargetTotals,
    UsageStore,
)

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_MS",
    "STORE_BUCKETS_S",
    "Histogram",
    "ProxyMetrics",
    "TimedStore",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Kong's default latency buckets, milliseconds.
LATENCY_BUCKETS_MS = (1, 2, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100, 200,
                      300, 400, 500, 1000, 2000, 5000, 10000, 30000, 60000)  # fmt: skip
#: One store call: ~0.1 ms on loopback Redis, up to a connect timeout when it is away.
STORE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)  # fmt: skip


class Histogram:
    """A Prometheus histogram: per-bucket counts, made cumulative only when rendered."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        sep = "," if labels else ""
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} {cumulative}'
        yield f"{name}_sum{{{labels}}} {_number(self.total)}"
        yield f"{name}_count{{{labels}}} {self.count}"


class _TargetSeries:
    """Every per-target counter of one balancer target."""

    __slots__ = (
        "completion_tokens",
        "cost",
        "errors",
        "labels",
        "latency",
        "prompt_tokens",
        "requests",
        "retries",
    )

    def __init__(self, plan: BalancerPlan, target: UpstreamTarget) -> None:
        self.labels = _labels(
            balancer=plan.balancer_id,
            target=target.target_id,
            ai_provider=target.provider,
            ai_model=target.model_name or "*",
        )
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.errors = 0
        self.retries = 0
        self.latency = Histogram(LATENCY_BUCKETS_MS)


class ProxyMetrics:
    """The counters of one replica. Every target of the config starts at zero, so rates
    are defined from the first scrape on."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._targets: dict[tuple[str, str], _TargetSeries] = {}
        for plan in gateway.balancers:
            for target in plan.targets:
                self._series(plan, target)
        self._store: dict[tuple[str, str], Histogram] = {}

    def use(self, gateway: Gateway) -> None:
        """Report on ``gateway`` from now on (the config changed): targets that stay keep
        their counters, new ones start at zero, removed ones stop being exported."""
        current = {
            (plan.balancer_id, target.target_id)
            for plan in gateway.balancers
            for target in plan.targets
        }
        for key in set(self._targets) - current:
            del self._targets[key]
        for plan in gateway.balancers:
            for target in plan.targets:
                self._series(plan, target)
        self.gateway = gateway

    def _series(self, plan: BalancerPlan, target: UpstreamTarget) -> _TargetSeries:
        key = (plan.balancer_id, target.target_id)
        series = self._targets.get(key)
        if series is None:
            series = self._targets[key] = _TargetSeries(plan, target)
        return series

    # --- hot path: one call per event, a dict lookup and a few additions -------------

    def succeeded(
        self,
        plan: BalancerPlan,
        target: UpstreamTarget,
        settlement: Settlement,
        started_at: float,
    ) -> None:
        """A target answered (``settlement`` holds its usage and cost); ``started_at`` is
        the attempt's ``time.perf_counter()``."""
        series = self._series(plan, target)
        series.requests += 1
        series.prompt_tokens += settlement.prompt_tokens
        series.completion_tokens += settlement.completion_tokens
        series.cost += settlement.cost
        series.latency.observe((time.perf_counter() - started_at) * 1000)

    def failed(self, plan: BalancerPlan, target: UpstreamTarget) -> None:
        """An attempt on ``target`` failed (transport error, error status, invalid reply)."""
        self._series(plan, target).errors += 1

    def retried(self, plan: BalancerPlan, target: UpstreamTarget) -> None:
        """After a failed attempt, the request was sent again, to ``target``."""
        self._series(plan, target).retries += 1

    def store_call(self, operation: str, backend: str, seconds: float) -> None:
        histogram = self._store.get((operation, backend))
        if histogram is None:
            histogram = self._store[(operation, backend)] = Histogram(STORE_BUCKETS_S)
        histogram.observe(seconds)

    # --- scrape ---------------------------------------------------------------------

    def render(self, *, degraded: bool, redis_outages: int | None) -> str:
        """The exposition text; the two gauges come from the store at scrape time."""
        series = list(self._targets.values())
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("ai_llm_requests_total", "counter", "AI requests answered per target")
        out += [f"ai_llm_requests_total{{{s.labels}}} {s.requests}" for s in series]
        family("ai_llm_tokens_total", "counter", "AI tokens per target, as the upstream counted")
        for s in series:
            for token_type, value in (
                ("prompt_tokens", s.prompt_tokens),
                ("completion_tokens", s.completion_tokens),
                ("total_tokens", s.prompt_tokens + s.completion_tokens),
            ):
                out.append(f'ai_llm_tokens_total{{{s.labels},token_type="{token_type}"}} {value}')
        family("ai_llm_cost_total", "counter", "AI cost per target (input_cost/output_cost)")
        out += [f"ai_llm_cost_total{{{s.labels}}} {_number(s.cost)}" for s in series]
        family(
            "ai_llm_provider_latency_ms",
            "histogram",
            "Time from sending to the target to its last byte, milliseconds",
        )
        for s in series:
            out += s.latency.lines("ai_llm_provider_latency_ms", s.labels)
        family("tokenlb_upstream_errors_total", "counter", "Failed attempts per target")
        out += [f"tokenlb_upstream_errors_total{{{s.labels}}} {s.errors}" for s in series]
        family("tokenlb_retries_total", "counter", "Attempts sent after a failed one, per target")
        out += [f"tokenlb_retries_total{{{s.labels}}} {s.retries}" for s in series]
        family(
            "tokenlb_store_roundtrip_seconds",
            "histogram",
            "Duration of the select and settle store calls, by store backend",
        )
        for (operation, backend), histogram in sorted(self._store.items()):
            labels = _labels(operation=operation, backend=backend)
            out += histogram.lines("tokenlb_store_roundtrip_seconds", labels)
        family("tokenlb_degraded", "gauge", "1 while Redis is unreachable (local counters)")
        out.append(f"tokenlb_degraded {int(degraded)}")
        if redis_outages is not None:
            family("tokenlb_redis_outages_total", "counter", "Redis outages since start")
            out.append(f"tokenlb_redis_outages_total {redis_outages}")
        family("tokenlb_info", "gauge", "Version and configuration hash of this replica")
        info = _labels(version=__version__, configuration_hash=self.gateway.version)
        out.append(f"tokenlb_info{{{info}}} 1")
        return "\n".join(out) + "\n"


class TimedStore:
    """A ``UsageStore`` that times ``select`` and ``settle`` into ``ProxyMetrics``.

    Wrapping the store keeps the timing out of the request code; the backend label is the
    store that really served the call (``local`` while a ``ResilientStore`` is degraded).
    """

    def __init__(self, store: UsageStore, metrics: ProxyMetrics) -> None:
        self.inner = store
        self.kind = store.kind
        self._metrics = metrics

    async def select(
        self,
        keys: BalancerKeys,
        algorithm: Algorithm,
        half_life_ms: int,
        candidates: Sequence[Candidate],
    ) -> Selection:
        started = time.perf_counter()
        selection = await self.inner.select(keys, algorithm, half_life_ms, candidates)
        self._metrics.store_call("select", selection.backend, time.perf_counter() - started)
        return selection

    async def settle(self, keys: BalancerKeys, half_life_ms: int, settlement: Settlement) -> None:
        started = time.perf_counter()
        await self.inner.settle(keys, half_life_ms, settlement)
        self._metrics.store_call("settle", settlement.backend, time.perf_counter() - started)

    async def totals(
        self, keys: BalancerKeys, half_life_ms: int, target_ids: Sequence[str]
    ) -> dict[str, TargetTotals]:
        return await self.inner.totals(keys, half_life_ms, target_ids)

    async def register(
        self,
        balancer_id: str,
        keys: BalancerKeys,
        targets: dict[str, str],
        balancer: dict[str, str] | None = None,
    ) -> None:
        await self.inner.register(balancer_id, keys, targets, balancer)

    async def retire(self, balancer_id: str, keys: BalancerKeys) -> None:
        await self.inner.retire(balancer_id, keys)

    async def rollups(self, keys: BalancerKeys, minutes: Sequence[int]) -> list[MinuteRollup]:
        return await self.inner.rollups(keys, minutes)

    async def healthy(self) -> bool:
        return await self.inner.healthy()

    async def close(self) -> None:
        await self.inner.close()


def _labels(**values: str) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in values.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
