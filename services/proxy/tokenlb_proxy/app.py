"""App factories: the proxy app (port 8000) and the admin app (port 8001).

Both share one ``Runtime``; the proxy app owns its lifecycle. Every error, including
Litestar's own (unknown method, bad path), leaves in the port's own shape: an OpenAI-style
error on the proxy port, where OpenAI SDKs read it, and Kong's ``{"message": ...}`` on
the admin port, where Kong's tools do.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, route
from litestar.exceptions import HTTPException
from litestar.response import Stream

from tokenlb_proxy import __version__
from tokenlb_proxy.admin import kong_errors
from tokenlb_proxy.admin.api import AdminApi
from tokenlb_proxy.admin.node import NodeInfo, public_configuration
from tokenlb_proxy.admin.security import TOKEN_HEADER, token_matches
from tokenlb_proxy.errors import ProxyError, error_body
from tokenlb_proxy.fleet import aggregator_health
from tokenlb_proxy.metrics import CONTENT_TYPE
from tokenlb_proxy.redis_outage import is_outage
from tokenlb_proxy.runtime import Runtime
from tokenlb_proxy.settings import redact_url
from tokenlb_proxy.stats import balancer_stats, window_minutes
from tokenlb_proxy.store import ResilientStore
from tokenlb_proxy.tokens import get_counter

__all__ = ["create_admin_app", "create_proxy_app"]

log = logging.getLogger(__name__)

_METHODS: list[Any] = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _proxy_error(_: Request[Any, Any, Any], exc: ProxyError) -> Response[bytes]:
    return Response(
        exc.body(), status_code=exc.status_code, headers=exc.headers, media_type="application/json"
    )


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return Response(
        error_body(exc.detail, "invalid_request_error" if exc.status_code < 500 else "api_error"),
        status_code=exc.status_code,
        media_type="application/json",
    )


def _unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error while serving a request", exc_info=exc)
    return Response(
        error_body("An unexpected error occurred", "api_error", "internal_error"),
        status_code=500,
        media_type="application/json",
    )


_EXCEPTION_HANDLERS: dict[Any, Any] = {
    ProxyError: _proxy_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}

_admin_encoder = msgspec.json.Encoder()


def _kong_body(status_code: int, body: Any) -> Response[bytes]:
    if body is None:
        return Response(b"", status_code=status_code)
    return Response(
        _admin_encoder.encode(body), status_code=status_code, media_type="application/json"
    )


def _admin_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals on the admin port (a method ``/status`` does not take, a
    bad ``/stats`` query) in Kong's words."""
    if exc.status_code == 404:
        error = kong_errors.not_found()
    elif exc.status_code == 405:
        error = kong_errors.method_not_allowed()
    else:
        error = kong_errors.AdminError(exc.status_code, {"message": exc.detail})
    return _kong_body(error.status_code, error.body)


def _admin_unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("Admin API: unhandled error while serving a request", exc_info=exc)
    return _kong_body(500, {"message": "An unexpected error occurred"})


_ADMIN_EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: _admin_http_error,
    Exception: _admin_unexpected_error,
}


def create_proxy_app(runtime: Runtime) -> Litestar:
    """The data-plane app: every path and method goes through route matching."""

    @route(["/", "/{path:path}"], http_method=_METHODS, request_max_body_size=None)
    async def proxy(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await runtime.proxy.handle(request)

    return Litestar(
        route_handlers=[proxy],
        exception_handlers=_EXCEPTION_HANDLERS,
        on_startup=[runtime.start],
        on_shutdown=[runtime.close],
        openapi_config=None,
        logging_config=None,
    )


def _admin_api(runtime: Runtime) -> Any:
    """Kong's Admin API (``admin/api.py``) on every other path of the admin app, ``/``
    included."""
    node = NodeInfo(node_id=runtime.node_id, configuration=public_configuration(runtime.settings))
    api = AdminApi(lambda: runtime.control, node)
    token = runtime.settings.admin_token

    @route(["/", "/{path:path}"], http_method=_METHODS)
    async def kong_admin_api(request: Request[Any, Any, Any]) -> Response[bytes]:
        path: str = request.scope["path"]  # percent-decoded, as the path parameter was
        if token is not None and not token_matches(token, request.headers.get(TOKEN_HEADER)):
            error = kong_errors.unauthorized()
            status, body = error.status_code, error.body
        else:
            try:
                status, body = await api.handle(
                    request.method,
                    path,
                    request.query_params,
                    await request.body(),
                    request.headers.get("content-type"),
                )
            except Exception:
                log.exception("Admin API: unexpected error on %s %s", request.method, path)
                status, body = 500, {"message": "An unexpected error occurred"}
        return _kong_body(status, body)

    return kong_admin_api


async def _aggregators(runtime: Runtime, reachable: bool) -> dict[str, Any] | None:
    """The fleet's aggregators and event backlog (``fleet.aggregator_health``); None on
    the embedded store, which rolls up in memory, and while Redis is unreachable."""
    if runtime.redis is None or not reachable:
        return None
    try:
        return await aggregator_health(
            runtime.redis, [plan.keys for plan in runtime.gateway.balancers]
        )
    except Exception as exc:  # Redis may have gone away since the ping
        if not is_outage(exc):
            raise
        return None


def create_admin_app(runtime: Runtime) -> Litestar:
    """The admin app: ``GET /status``, ``/stats`` and ``/metrics`` (always open, see
    ``admin/security.py``) and Kong's Admin API on every other path (behind the admin
    token when one is set); bound to 127.0.0.1 by default. Every error is Kong's shape."""

    @get("/status")
    async def status() -> dict[str, Any]:
        store = runtime.store
        reachable = await store.healthy()
        redis_url = runtime.settings.redis_url
        balancers = []
        for plan in runtime.gateway.balancers:
            totals = await store.totals(
                plan.keys, plan.half_life_ms, [t.target_id for t in plan.targets]
            )
            balancers.append(
                {
                    "id": plan.balancer_id,
                    "algorithm": plan.algorithm,
                    "tokens_count_strategy": plan.tokens_count_strategy,
                    "usage_half_life_s": plan.half_life_ms / 1000,
                    "targets": [
                        {
                            "id": t.target_id,
                            "model": t.label,
                            "weight": t.weight,
                            "requests": totals[t.target_id].requests,
                            "errors": totals[t.target_id].errors,
                            "prompt_tokens": totals[t.target_id].prompt_tokens,
                            "completion_tokens": totals[t.target_id].completion_tokens,
                            "total_tokens": totals[t.target_id].total_tokens,
                            "cost": totals[t.target_id].cost,
                            "usage": totals[t.target_id].usage,
                            "in_flight": totals[t.target_id].in_flight,
                            "latency": totals[t.target_id].latency,
                        }
                        for t in plan.targets
                    ],
                }
            )
        aggregators = await _aggregators(runtime, reachable)
        degraded = runtime.degraded(reachable)
        return {
            "version": __version__,
            "configuration_hash": runtime.gateway.version,
            # The stored version served (0: a file not stored yet, Redis being away), and
            # why a newer stored version is not served here, if it is not.
            "config_version": runtime.served.version,
            "config_error": (
                {"version": runtime.known.version, "errors": runtime.config_error}
                if runtime.config_error is not None
                else None
            ),
            "uptime_s": round(time.time() - runtime.started_at, 3),
            "store": "redis" if redis_url else "local",
            "redis": (
                {"url": redact_url(redis_url), "reachable": reachable} if redis_url else None
            ),
            "database": {"reachable": reachable},
            "degraded": degraded,
            "tokenizer": get_counter().source,
            "aggregators": aggregators,
            "balancers": balancers,
        }

    @get("/stats")
    async def stats(minutes: int = 15) -> dict[str, Any]:
        """Per-target counters over the last ``minutes`` (rollups), usage right now, and
        the aggregators that make the rollups (what ``tokenlb stats --json`` prints)."""
        window = window_minutes(max(1, min(minutes, 7 * 24 * 60)))
        return {
            "aggregators": await _aggregators(runtime, await runtime.store.healthy()),
            "balancers": [
                await balancer_stats(
                    runtime.store,
                    plan.balancer_id,
                    plan.keys,
                    plan.half_life_ms,
                    {t.target_id: {"model": t.label, "weight": t.weight} for t in plan.targets},
                    window,
                    algorithm=plan.algorithm,
                    tokens_count_strategy=plan.tokens_count_strategy,
                )
                for plan in runtime.gateway.balancers
            ],
        }

    @get("/metrics")
    async def metrics() -> Response[str]:
        store = runtime.store
        degraded = runtime.degraded(await store.healthy())
        outages = store.outages if isinstance(store, ResilientStore) else None
        text = runtime.metrics.render(degraded=degraded, redis_outages=outages)
        return Response(text, media_type=CONTENT_TYPE)

    return Litestar(
        route_handlers=[status, stats, metrics, _admin_api(runtime)],
        exception_handlers=_ADMIN_EXCEPTION_HANDLERS,
        openapi_config=None,
        logging_config=None,
    )
