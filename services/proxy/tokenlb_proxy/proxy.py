"""The request path of one replica: match, validate, choose, forward, settle.

One store call chooses and reserves (one Redis round trip), one settles after the
response and appends the attempt's usage event (one more); nothing else touches Redis.
Failover retries on an untried target per ``failover_criteria`` and ``retries``,
releasing each failed reservation before choosing again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from litestar import Request, Response
from litestar.response import Stream

from tokenlb_proxy.auth import NOBODY, Authenticated, HiddenHeaders, authenticate
from tokenlb_proxy.chat import ParsedRequest, parse_chat_request, upstream_body
from tokenlb_proxy.errors import (
    BodyTooLarge,
    BudgetExhausted,
    NoTargetAvailable,
    ProxyError,
    RouteNotFound,
    StreamingDenied,
    UpstreamFailed,
    UpstreamTimeout,
)
from tokenlb_proxy.events import UsageEvent
from tokenlb_proxy.health import counts_as_failure, retry_after_ms
from tokenlb_proxy.metrics import ProxyMetrics
from tokenlb_proxy.plan import BalancerPlan, Gateway, UpstreamTarget
from tokenlb_proxy.routing import match_route
from tokenlb_proxy.stats_log import write_kong_log
from tokenlb_proxy.store.base import Algorithm, Candidate, Selection, Settlement, UsageStore
from tokenlb_proxy.tracecontext import TraceContext, new_span_id, parse_traceparent
from tokenlb_proxy.transport import AiohttpTransport
from tokenlb_proxy.upstream import (
    StreamState,
    relay_stream,
    returned_headers,
    streamed_text,
    upstream_headers,
    upstream_params,
)
from tokenlb_proxy.usage import (
    TokenUsage,
    completion_text_tokens,
    counted,
    estimate_budget_tokens,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    read_completion,
)

__all__ = ["ProxyService"]

log = logging.getLogger(__name__)

NO_ROUTE = "no Route matched with those values"
STREAMING_DENIED = "response streaming is not enabled for this LLM"


@dataclass(slots=True)
class _Exchange:
    """One client request on its way through the gateway."""

    request: Request[Any, Any, Any]
    plan: BalancerPlan
    #: The consumer key-auth identified, and the upstream headers that follow from it.
    auth: Authenticated
    parsed: ParsedRequest
    stream: bool
    client_wants_usage: bool
    prompt_estimate: int
    trace: TraceContext
    #: The gateway's span for the whole request; each attempt is a child of it.
    span_id: str
    started_wall_ms: float
    started_perf: float

    def wall_ms(self, perf: float) -> float:
        """Wall-clock milliseconds of a ``time.perf_counter()`` reading."""
        return self.started_wall_ms + (perf - self.started_perf) * 1000


@dataclass(slots=True)
class _Attempt:
    """One try on one target."""

    target: UpstreamTarget
    selection: Selection
    reserved: float
    #: Retries before this attempt.
    number: int
    #: True when no other attempt can follow (retries used up, or no untried target).
    last_possible: bool
    span_id: str
    started_perf: float
    #: Tokens reserved in the target's budget window (-1: it has no budget).
    budget_reserved: int = -1


class _Failover(Exception):
    """An attempt failed in a way ``failover_criteria`` allows retrying elsewhere."""

    def __init__(self, error: ProxyError, response: Response[bytes] | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.response = response


class ProxyService:
    """Serves chat requests for one compiled gateway config."""

    def __init__(
        self,
        gateway: Gateway,
        store: UsageStore,
        upstream: AiohttpTransport,
        metrics: ProxyMetrics | None = None,
        *,
        write_logs: bool = True,
    ) -> None:
        self.gateway = gateway
        self.store = store
        #: The replica's one pooled upstream client (see transport.py).
        self.upstream = upstream
        #: Write Kong's log line here (embedded store); with Redis the aggregator does.
        self.write_logs = write_logs
        self.metrics = metrics if metrics is not None else ProxyMetrics(gateway)
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        started_wall_ms = time.time() * 1000
        started_perf = time.perf_counter()
        headers = request.headers
        rule = match_route(
            self.gateway, request.method, request.url.path, headers.get("host", ""), headers
        )
        if rule is None:
            raise RouteNotFound(NO_ROUTE)
        plan = rule.plan
        auth = NOBODY
        if rule.key_auth is not None:
            # Before the body is read: a refused request costs no read, store call or
            # upstream call.
            auth = authenticate(
                rule.key_auth, request.method, headers, lambda: request.query_params
            )
            plan = rule.plan_for(auth.consumer)
        if plan is None:
            raise RouteNotFound(f"no ai-proxy-advanced plugin applies to route {rule.name!r}")
        body = await _read_body(request, plan.max_request_body_size)
        parsed = parse_chat_request(body)
        view = parsed.view
        stream = bool(view.stream)
        if stream and plan.response_streaming == "deny":
            raise StreamingDenied(STREAMING_DENIED, param="stream")
        if plan.response_streaming == "always":
            stream = True
        exchange = _Exchange(
            request=request,
            plan=plan,
            auth=auth,
            parsed=parsed,
            stream=stream,
            client_wants_usage=bool(
                stream and view.stream_options is not None and view.stream_options.include_usage
            ),
            prompt_estimate=estimate_prompt_tokens(view),
            trace=parse_traceparent(headers.get("traceparent")),
            span_id=new_span_id(),
            started_wall_ms=started_wall_ms,
            started_perf=started_perf,
        )
        return await self._balance(exchange)

    async def _balance(self, exchange: _Exchange) -> Response[bytes] | Stream:
        """Choose, forward, and fail over until an attempt answers or none is left."""
        plan, view = exchange.plan, exchange.parsed.view
        allowed = plan.by_model.get(view.model or "") or tuple(t.index for t in plan.targets)
        estimates = [
            counted(
                plan.tokens_count_strategy,
                target,
                exchange.prompt_estimate,
                estimate_completion_tokens(view, target),
            )
            for target in plan.targets
        ]
        budget_tokens = [
            estimate_budget_tokens(view, target, exchange.prompt_estimate) if target.budgeted else 0
            for target in plan.targets
        ]
        algorithm, tiers = _ranking(plan, exchange.request.headers.get(plan.hash_on_header))
        tried: set[int] = set()
        last_failure: _Failover | None = None
        for number in range(plan.retries + 1):
            candidates = [
                Candidate(
                    target_id=t.target_id,
                    weight=t.weight,
                    estimate=estimates[t.index],
                    eligible=t.index in allowed and t.index not in tried,
                    lease_ms=plan.lease_ms,
                    tier=tiers[t.index],
                    tokens=budget_tokens[t.index],
                    tokens_per_minute=t.tokens_per_minute,
                    requests_per_minute=t.requests_per_minute,
                )
                for t in plan.targets
            ]
            selection = await self.store.select(plan.keys, algorithm, plan.half_life_ms, candidates)
            if selection.index is None:
                if last_failure is None and selection.blocked:
                    raise _nothing_available(selection)
                break
            target = plan.targets[selection.index]
            if tried:
                self.metrics.retried(plan, target)
            tried.add(target.index)
            attempt = _Attempt(
                target=target,
                selection=selection,
                reserved=estimates[target.index] if plan.algorithm == "lowest-usage" else 0.0,
                number=number,
                last_possible=number == plan.retries or len(tried) >= len(allowed),
                span_id=new_span_id(),
                started_perf=time.perf_counter(),
                budget_reserved=budget_tokens[target.index] if target.budgeted else -1,
            )
            try:
                if exchange.stream:
                    return await self._forward_stream(exchange, attempt)
                return await self._forward(exchange, attempt)
            except _Failover as failure:
                last_failure = failure
                log.info(
                    "target %s failed (%s); %s",
                    target.label,
                    failure.error.message,
                    "no target left" if attempt.last_possible else "retrying on another target",
                )
        if last_failure is not None:
            if last_failure.response is not None:
                return last_failure.response
            raise last_failure.error
        raise NoTargetAvailable("no target is available for this request")

    async def _forward(self, exchange: _Exchange, attempt: _Attempt) -> Response[bytes]:
        target, plan = attempt.target, exchange.plan
        try:
            response = await self.upstream.send(
                target.url,
                body=upstream_body(exchange.parsed, target, stream=False, want_usage=False),
                headers=self._upstream_headers(exchange, attempt),
                params=upstream_params(target, exchange.request.query_params),
                timeouts=plan.timeout,
                stream=False,
            )
        except httpx.HTTPError as exc:
            raise await self._transport_failure(exchange, attempt, exc) from exc
        headers = self._response_headers(exchange, target, response)
        if response.status_code != 200:
            return await self._upstream_error(
                exchange, attempt, response, response.content, headers
            )
        completion = read_completion(response.content)
        if completion is None:
            await self._invalid_response(exchange, attempt, response.status_code)
        usage = completion.usage if completion is not None else None
        self._settle_success(
            exchange,
            attempt,
            usage or TokenUsage(prompt_tokens=exchange.prompt_estimate),
            response_model=completion.model if completion is not None else None,
            first_byte_perf=None,
            response_payload=response.content if target.log_payloads else None,
        )
        return Response(
            response.content,
            status_code=200,
            headers=headers,
            media_type=response.headers.get("content-type", "application/json"),
        )

    async def _forward_stream(
        self, exchange: _Exchange, attempt: _Attempt
    ) -> Response[bytes] | Stream:
        target, plan = attempt.target, exchange.plan
        try:
            response = await self.upstream.send(
                target.url,
                body=upstream_body(exchange.parsed, target, stream=True, want_usage=True),
                headers=self._upstream_headers(exchange, attempt),
                params=upstream_params(target, exchange.request.query_params),
                timeouts=plan.timeout,
                stream=True,
            )
        except httpx.HTTPError as exc:
            raise await self._transport_failure(exchange, attempt, exc) from exc
        headers = self._response_headers(exchange, target, response)
        if response.status_code != 200:
            try:
                body = await response.aread()
            except httpx.HTTPError as exc:
                raise await self._transport_failure(exchange, attempt, exc) from exc
            finally:
                await response.aclose()
            return await self._upstream_error(exchange, attempt, response, body, headers)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream") and (
            "invalid_header" in plan.failover_criteria
        ):
            await response.aclose()
            await self._invalid_response(exchange, attempt, response.status_code)
        state = StreamState()

        def finish() -> None:
            usage = state.usage
            if usage is None:
                # The upstream never sent a usage chunk (or the stream broke): count what
                # arrived with tiktoken, the last resort.
                usage = TokenUsage(
                    prompt_tokens=exchange.prompt_estimate,
                    completion_tokens=completion_text_tokens(streamed_text(state.content_events)),
                )
            self._settle_success(
                exchange,
                attempt,
                usage,
                response_model=state.model,
                first_byte_perf=state.first_byte_at,
                response_payload=None,
            )

        return Stream(
            relay_stream(
                response,
                state,
                show_usage=exchange.client_wants_usage,
                clock=time.perf_counter,
                on_finish=finish,
            ),
            status_code=200,
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            media_type="text/event-stream",
        )

    def _upstream_headers(self, exchange: _Exchange, attempt: _Attempt) -> dict[str, str]:
        auth = exchange.auth
        client: Mapping[str, str] = exchange.request.headers
        if auth.hidden_headers:
            client = HiddenHeaders(client, auth.hidden_headers)
        headers = upstream_headers(attempt.target, client)
        if auth.upstream_headers:
            headers.update(auth.upstream_headers)
        # The upstream continues the trace under this attempt's span.
        headers["traceparent"] = exchange.trace.traceparent(attempt.span_id)
        return headers

    def _response_headers(
        self, exchange: _Exchange, target: UpstreamTarget, response: httpx.Response
    ) -> dict[str, str]:
        headers = returned_headers(response)
        if exchange.plan.model_name_header:
            model = target.model_name or exchange.parsed.view.model or "unknown"
            headers["x-kong-llm-model"] = f"{target.provider}/{model}"
        headers["traceparent"] = exchange.trace.traceparent(exchange.span_id)
        return headers

    async def _transport_failure(
        self, exchange: _Exchange, attempt: _Attempt, exc: httpx.HTTPError
    ) -> Exception:
        """Settle a connection error or timeout; fail over when the criteria allow it."""
        target = attempt.target
        error: ProxyError
        if isinstance(exc, httpx.TimeoutException):
            error = UpstreamTimeout(f"The upstream server is timing out ({target.label})")
            criterion = "timeout"
        else:
            error = UpstreamFailed(
                f"An invalid response was received from the upstream server ({target.label}: "
                f"{type(exc).__name__})"
            )
            criterion = "error"
        failover = criterion in exchange.plan.failover_criteria
        await self._settle_failure(exchange, attempt, criterion, 0, final=not failover)
        return _Failover(error) if failover else error

    async def _upstream_error(
        self,
        exchange: _Exchange,
        attempt: _Attempt,
        response: httpx.Response,
        body: bytes,
        headers: dict[str, str],
    ) -> Response[bytes]:
        """A non-200 answer: fail over when ``failover_criteria`` lists its status, else
        pass it to the client unchanged (as Kong does). Either way the attempt failed."""
        criterion = f"http_{response.status_code}"
        failover = criterion in exchange.plan.failover_criteria
        await self._settle_failure(
            exchange,
            attempt,
            criterion,
            response.status_code,
            final=not failover,
            retry_after_ms=retry_after_ms(response.headers) if response.status_code == 429 else 0,
        )
        passthrough = Response(
            body,
            status_code=response.status_code,
            headers=headers,
            media_type=response.headers.get("content-type", "application/json"),
        )
        if failover:
            error = UpstreamFailed(f"upstream answered {response.status_code}")
            raise _Failover(error, passthrough)
        return passthrough

    async def _invalid_response(self, exchange: _Exchange, attempt: _Attempt, status: int) -> None:
        """A 200 that is not a completion (or not an event stream when one was asked for):
        ``invalid_header`` in ``failover_criteria`` makes it a failed attempt."""
        if "invalid_header" not in exchange.plan.failover_criteria:
            return
        await self._settle_failure(exchange, attempt, "invalid", status, final=False)
        raise _Failover(
            UpstreamFailed(
                "An invalid response was received from the upstream server "
                f"({attempt.target.label})"
            )
        )

    def _event(
        self,
        exchange: _Exchange,
        attempt: _Attempt,
        *,
        final: bool,
        status: int,
        error: str,
        usage: TokenUsage,
        cost: float,
        response_model: str | None,
        first_byte_perf: float | None,
        response_payload: bytes | None,
    ) -> UsageEvent:
        """The attempt's usage event, with real timestamps and the trace ids."""
        now = time.perf_counter()
        target, plan = attempt.target, exchange.plan
        log_payloads = target.log_payloads
        return UsageEvent(
            balancer=plan.balancer_id,
            target=target.target_id,
            target_label=target.label,
            provider=target.provider,
            request_model=exchange.parsed.view.model,
            response_model=response_model or target.model_name,
            algorithm=plan.algorithm,
            strategy=plan.tokens_count_strategy,
            score=attempt.selection.score,
            attempt=attempt.number,
            final=final,
            status=status,
            error=error,
            stream=exchange.stream,
            start_ms=exchange.wall_ms(attempt.started_perf),
            end_ms=exchange.wall_ms(now),
            upstream_ms=(now - attempt.started_perf) * 1000,
            ttft_ms=(
                (first_byte_perf - attempt.started_perf) * 1000
                if first_byte_perf is not None
                else None
            ),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=cost,
            trace_id=exchange.trace.trace_id,
            span_id=attempt.span_id,
            request_span_id=exchange.span_id,
            client_span_id=exchange.trace.parent_span_id,
            request_start_ms=exchange.started_wall_ms,
            log_statistics=target.log_statistics,
            request_payload=exchange.parsed.raw_text() if log_payloads else None,
            response_payload=(
                response_payload.decode("utf-8", "replace")
                if log_payloads and response_payload is not None
                else None
            ),
        )

    def _settle_success(
        self,
        exchange: _Exchange,
        attempt: _Attempt,
        usage: TokenUsage,
        *,
        response_model: str | None,
        first_byte_perf: float | None,
        response_payload: bytes | None,
    ) -> None:
        """Record a successful attempt in the background: the client does not wait."""
        target, plan = attempt.target, exchange.plan
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        cost = target.cost(prompt, completion)
        event = self._event(
            exchange,
            attempt,
            final=True,
            status=200,
            error="",
            usage=usage,
            cost=cost,
            response_model=response_model,
            first_byte_perf=first_byte_perf,
            response_payload=response_payload,
        )
        settlement = Settlement(
            target_id=target.target_id,
            reserved=attempt.reserved,
            reserved_at_ms=attempt.selection.reserved_at_ms,
            actual=counted(plan.tokens_count_strategy, target, prompt, completion),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost,
            failed=False,
            backend=attempt.selection.backend,
            event=event,
            lease_id=attempt.selection.lease_id,
            latency=_latency_sample(plan, event),
            budget_reserved=attempt.budget_reserved,
            budget_used=prompt + completion,
        )
        self.metrics.succeeded(plan, target, settlement, attempt.started_perf)
        self._spawn(self._settle(plan, settlement))

    async def _settle_failure(
        self,
        exchange: _Exchange,
        attempt: _Attempt,
        error: str,
        status: int,
        *,
        final: bool,
        retry_after_ms: int = 0,
    ) -> None:
        """Release a failed attempt's reservation before choosing again, and feed the
        circuit breaker (``max_fails``; an upstream 429's ``Retry-After``)."""
        self.metrics.failed(exchange.plan, attempt.target)
        final = final or attempt.last_possible
        plan = exchange.plan
        event = self._event(
            exchange,
            attempt,
            final=final,
            status=status,
            error=error,
            usage=TokenUsage(),
            cost=0.0,
            response_model=None,
            first_byte_perf=None,
            response_payload=None,
        )
        await self._settle(
            plan,
            Settlement(
                target_id=attempt.target.target_id,
                reserved=attempt.reserved,
                reserved_at_ms=attempt.selection.reserved_at_ms,
                actual=0.0,
                prompt_tokens=0,
                completion_tokens=0,
                cost=0.0,
                failed=True,
                backend=attempt.selection.backend,
                event=event,
                breaker_failure=counts_as_failure(error, plan.failover_criteria),
                max_fails=plan.max_fails,
                fail_timeout_ms=plan.fail_timeout_ms,
                retry_after_ms=retry_after_ms,
                lease_id=attempt.selection.lease_id,
                budget_reserved=attempt.budget_reserved,
            ),
        )

    async def _settle(self, plan: BalancerPlan, settlement: Settlement) -> None:
        try:
            await self.store.settle(plan.keys, plan.half_life_ms, settlement)
        except Exception:
            # Settling must never fail a response that is already on its way; the
            # reservation decays away on its own.
            log.exception("could not record usage for target %s", settlement.target_id)
        event = settlement.event
        if self.write_logs and event is not None and event.log_statistics and event.final:
            write_kong_log(event)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a settle in the background: the client's response does not wait for it."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for every background settle (on shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _ranking(plan: BalancerPlan, hash_key: str | None) -> tuple[Algorithm, list[int]]:
    """The algorithm the store runs for this request, and each target's tier.

    consistent-hashing ranks the targets in the order the ``hash_on_header`` value tries them;
    a request without the header falls back to the fleet-wide weighted round-robin (Kong's
    upstreams do the same when the hash input is missing and no fallback is set). priority
    ranks them by weight group, heaviest first.
    """
    if plan.algorithm == "priority":
        return plan.algorithm, [t.priority_tier for t in plan.targets]
    if plan.hashing is not None:
        if hash_key:
            tiers = [0] * len(plan.targets)
            for rank, index in enumerate(plan.hashing.order(hash_key)):
                tiers[index] = rank
            return plan.algorithm, tiers
        return "round-robin", [0] * len(plan.targets)
    return plan.algorithm, [0] * len(plan.targets)


def _latency_sample(plan: BalancerPlan, event: UsageEvent) -> float:
    """lowest-latency's measure of a successful attempt: ``e2e``, the milliseconds from
    sending it upstream to its last byte; ``tpot``, that divided by its output tokens (an
    answer without output tokens gives no sample). -1: no sample."""
    if plan.algorithm != "lowest-latency":
        return -1.0
    if plan.latency_strategy == "e2e":
        return event.upstream_ms
    if event.completion_tokens <= 0:
        return -1.0
    return event.upstream_ms / event.completion_tokens


def _nothing_available(selection: Selection) -> ProxyError:
    """Every target that could serve the request is out of rotation (503) or over its
    budget (429), with Retry-After set to when the first of them can take it (Kong answers
    500 with no hint)."""
    wait_s = max(1, math.ceil((selection.retry_at_ms - selection.reserved_at_ms) / 1000))
    if selection.blocked in ("tokens", "requests"):
        return BudgetExhausted(
            f"every target for this request is over its {selection.blocked}-per-minute budget; "
            f"retry in {wait_s} s",
            limit=selection.blocked,
            headers={"retry-after": str(wait_s)},
        )
    return NoTargetAvailable(
        "every target for this request is out of rotation (circuit breaker open or upstream "
        f"rate limit); the first returns in {wait_s} s",
        headers={"retry-after": str(wait_s)},
    )


async def _read_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (0: no limit) before reading it all."""
    too_large = BodyTooLarge(f"request body is larger than max_request_body_size ({limit} bytes)")
    if limit:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit and size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
