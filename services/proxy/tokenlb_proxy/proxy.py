"""The request path of one replica: match, validate, choose, forward, settle.

One store call chooses and reserves (one Redis round trip), one settles after the
response (one more); nothing else touches Redis. Failover retries on an untried target
per ``failover_criteria`` and ``retries``, releasing each failed reservation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
from litestar import Request, Response
from litestar.response import Stream

from tokenlb_proxy.chat import ParsedRequest, parse_chat_request, upstream_body
from tokenlb_proxy.errors import (
    BodyTooLarge,
    NoTargetAvailable,
    ProxyError,
    RouteNotFound,
    StreamingDenied,
    UpstreamFailed,
    UpstreamTimeout,
)
from tokenlb_proxy.metrics import ProxyMetrics
from tokenlb_proxy.plan import BalancerPlan, Gateway, UpstreamTarget
from tokenlb_proxy.routing import match_route
from tokenlb_proxy.stats_log import log_statistics
from tokenlb_proxy.store.base import Candidate, Selection, Settlement, UsageStore
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
    estimate_completion_tokens,
    estimate_prompt_tokens,
    read_completion,
)

__all__ = ["ProxyService"]

log = logging.getLogger(__name__)

NO_ROUTE = "no Route matched with those values"
STREAMING_DENIED = "response streaming is not enabled for this LLM"


@dataclass(slots=True)
class _Attempt:
    """One try on one target."""

    target: UpstreamTarget
    selection: Selection
    reserved: float
    started_at: float


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
        http: httpx.AsyncClient,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.http = http
        self.metrics = metrics if metrics is not None else ProxyMetrics(gateway)
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        rule = match_route(
            self.gateway,
            request.method,
            request.url.path,
            request.headers.get("host", ""),
            request.headers,
        )
        if rule is None:
            raise RouteNotFound(NO_ROUTE)
        plan = rule.plan
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
        client_wants_usage = bool(
            stream and view.stream_options is not None and view.stream_options.include_usage
        )
        allowed = plan.by_model.get(view.model or "") or tuple(t.index for t in plan.targets)
        prompt_estimate = estimate_prompt_tokens(view)
        estimates = [
            counted(
                plan.tokens_count_strategy,
                target,
                prompt_estimate,
                estimate_completion_tokens(view, target),
            )
            for target in plan.targets
        ]
        tried: set[int] = set()
        last_failure: _Failover | None = None
        for _ in range(plan.retries + 1):
            candidates = [
                Candidate(
                    target_id=t.target_id,
                    weight=t.weight,
                    estimate=estimates[t.index],
                    eligible=t.index in allowed and t.index not in tried,
                )
                for t in plan.targets
            ]
            selection = await self.store.select(
                plan.keys, plan.algorithm, plan.half_life_ms, candidates
            )
            if selection.index is None:
                break
            target = plan.targets[selection.index]
            if tried:
                self.metrics.retried(plan, target)
            tried.add(target.index)
            attempt = _Attempt(
                target=target,
                selection=selection,
                reserved=estimates[target.index] if plan.algorithm == "lowest-usage" else 0.0,
                started_at=time.perf_counter(),
            )
            try:
                if stream:
                    return await self._forward_stream(
                        request, plan, parsed, attempt, prompt_estimate, client_wants_usage
                    )
                return await self._forward(request, plan, parsed, attempt, prompt_estimate)
            except _Failover as failure:
                last_failure = failure
                log.info(
                    "target %s failed (%s); %s",
                    target.label,
                    failure.error.message,
                    "retrying on another target" if len(tried) < len(allowed) else "no target left",
                )
        if last_failure is not None:
            if last_failure.response is not None:
                return last_failure.response
            raise last_failure.error
        raise NoTargetAvailable("no target is available for this request")

    async def _forward(
        self,
        request: Request[Any, Any, Any],
        plan: BalancerPlan,
        parsed: ParsedRequest,
        attempt: _Attempt,
        prompt_estimate: int,
    ) -> Response[bytes]:
        target = attempt.target
        content = upstream_body(parsed, target, stream=False, want_usage=False)
        try:
            response = await self.http.post(
                target.url,
                content=content,
                headers=upstream_headers(target, request.headers),
                params=upstream_params(target, request.query_params),
                timeout=plan.timeout,
            )
        except httpx.HTTPError as exc:
            await self._settle_failure(plan, attempt)
            raise _transport_failover(plan, target, exc) from exc
        headers = self._response_headers(plan, target, parsed, response)
        if response.status_code != 200:
            return await self._upstream_error(plan, attempt, response, response.content, headers)
        completion = read_completion(response.content)
        if completion is None:
            await self._invalid_response(plan, attempt)
        usage = completion.usage if completion is not None else None
        response_model = completion.model if completion is not None else None
        if usage is None:
            usage = TokenUsage(prompt_tokens=prompt_estimate)
        self._settle_success(plan, attempt, usage)
        if target.log_statistics:
            log_statistics(
                plan,
                target,
                parsed,
                usage,
                response_model,
                attempt.started_at,
                None,
                response.content if target.log_payloads else None,
            )
        return Response(
            response.content,
            status_code=200,
            headers=headers,
            media_type=response.headers.get("content-type", "application/json"),
        )

    async def _forward_stream(
        self,
        request: Request[Any, Any, Any],
        plan: BalancerPlan,
        parsed: ParsedRequest,
        attempt: _Attempt,
        prompt_estimate: int,
        client_wants_usage: bool,
    ) -> Response[bytes] | Stream:
        target = attempt.target
        content = upstream_body(parsed, target, stream=True, want_usage=True)
        upstream_request = self.http.build_request(
            "POST",
            target.url,
            content=content,
            headers=upstream_headers(target, request.headers),
            params=upstream_params(target, request.query_params),
            timeout=plan.timeout,
        )
        try:
            response = await self.http.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            await self._settle_failure(plan, attempt)
            raise _transport_failover(plan, target, exc) from exc
        headers = self._response_headers(plan, target, parsed, response)
        if response.status_code != 200:
            try:
                body = await response.aread()
            except httpx.HTTPError as exc:
                await self._settle_failure(plan, attempt)
                raise _transport_failover(plan, target, exc) from exc
            finally:
                await response.aclose()
            return await self._upstream_error(plan, attempt, response, body, headers)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream") and (
            "invalid_header" in plan.failover_criteria
        ):
            await response.aclose()
            await self._invalid_response(plan, attempt)
        state = StreamState()

        def finish() -> None:
            self._finish_stream(plan, parsed, attempt, state, prompt_estimate)

        return Stream(
            relay_stream(
                response,
                state,
                show_usage=client_wants_usage,
                clock=time.perf_counter,
                on_finish=finish,
            ),
            status_code=200,
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            media_type="text/event-stream",
        )

    def _finish_stream(
        self,
        plan: BalancerPlan,
        parsed: ParsedRequest,
        attempt: _Attempt,
        state: StreamState,
        prompt_estimate: int,
    ) -> None:
        usage = state.usage
        if usage is None:
            # The upstream never sent a usage chunk (or the stream broke): count what
            # arrived with tiktoken, the last resort.
            usage = TokenUsage(
                prompt_tokens=prompt_estimate,
                completion_tokens=completion_text_tokens(streamed_text(state.content_events)),
            )
        self._settle_success(plan, attempt, usage)
        target = attempt.target
        if target.log_statistics:
            log_statistics(
                plan,
                target,
                parsed,
                usage,
                state.model,
                attempt.started_at,
                state.first_byte_at,
                None,
            )

    async def _upstream_error(
        self,
        plan: BalancerPlan,
        attempt: _Attempt,
        response: httpx.Response,
        body: bytes,
        headers: dict[str, str],
    ) -> Response[bytes]:
        """A non-200 answer: fail over when ``failover_criteria`` lists its status, else
        pass it to the client unchanged (as Kong does). Either way the attempt failed."""
        await self._settle_failure(plan, attempt)
        passthrough = Response(
            body,
            status_code=response.status_code,
            headers=headers,
            media_type=response.headers.get("content-type", "application/json"),
        )
        if f"http_{response.status_code}" in plan.failover_criteria:
            error = UpstreamFailed(f"upstream answered {response.status_code}")
            raise _Failover(error, passthrough)
        return passthrough

    async def _invalid_response(self, plan: BalancerPlan, attempt: _Attempt) -> None:
        """A 200 that is not a completion (or not an event stream when one was asked for):
        ``invalid_header`` in ``failover_criteria`` makes it a failed attempt."""
        if "invalid_header" not in plan.failover_criteria:
            return
        await self._settle_failure(plan, attempt)
        raise _Failover(
            UpstreamFailed(
                "An invalid response was received from the upstream server "
                f"({attempt.target.label})"
            )
        )

    def _response_headers(
        self,
        plan: BalancerPlan,
        target: UpstreamTarget,
        parsed: ParsedRequest,
        response: httpx.Response,
    ) -> dict[str, str]:
        headers = returned_headers(response)
        if plan.model_name_header:
            model = target.model_name or parsed.view.model or "unknown"
            headers["x-kong-llm-model"] = f"{target.provider}/{model}"
        return headers

    def _settle_success(self, plan: BalancerPlan, attempt: _Attempt, usage: TokenUsage) -> None:
        target = attempt.target
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        settlement = Settlement(
            target_id=target.target_id,
            reserved=attempt.reserved,
            reserved_at_ms=attempt.selection.reserved_at_ms,
            actual=counted(plan.tokens_count_strategy, target, prompt, completion),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=target.cost(prompt, completion),
            failed=False,
            backend=attempt.selection.backend,
        )
        self.metrics.succeeded(plan, target, settlement, attempt.started_at)
        self._spawn(self._settle(plan, settlement))

    async def _settle_failure(self, plan: BalancerPlan, attempt: _Attempt) -> None:
        """Release the reservation of a failed attempt before choosing again."""
        self.metrics.failed(plan, attempt.target)
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
            ),
        )

    async def _settle(self, plan: BalancerPlan, settlement: Settlement) -> None:
        try:
            await self.store.settle(plan.keys, plan.half_life_ms, settlement)
        except Exception:
            # Settling must never fail a response that is already on its way; the
            # reservation decays away on its own.
            log.exception("could not record usage for target %s", settlement.target_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a settle in the background: the client's response does not wait for it."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for every background settle (on shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _transport_failover(
    plan: BalancerPlan, target: UpstreamTarget, exc: httpx.HTTPError
) -> Exception:
    """Map a transport error to a failover or a final error, per ``failover_criteria``."""
    if isinstance(exc, httpx.TimeoutException):
        error: ProxyError = UpstreamTimeout(f"The upstream server is timing out ({target.label})")
        criterion = "timeout"
    else:
        error = UpstreamFailed(
            f"An invalid response was received from the upstream server ({target.label}: "
            f"{type(exc).__name__})"
        )
        criterion = "error"
    if criterion in plan.failover_criteria:
        return _Failover(error)
    return error


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
