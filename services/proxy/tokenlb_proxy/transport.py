"""An httpx transport that sends requests with aiohttp.

Stock ``httpx.AsyncClient`` (httpcore underneath) was the proxy's first wall: on one core
it spent more CPU per upstream call than the rest of the request path together. aiohttp's
client does the same work in C (its HTTP parser, multidict, keep-alive pool), so the
proxy keeps httpx's API everywhere (requests, responses, timeouts, exceptions) and only
the bytes move through aiohttp. The ``httpx-aiohttp`` package does the same, but maps a
refused connection to ``httpx.ConnectTimeout``, which would turn Kong's ``error``
failover criterion into ``timeout``; this module maps aiohttp's errors to the httpx
exceptions that stock httpx raises in the same situation:

    aiohttp                                   httpx
    ConnectionTimeoutError (pool + connect)   ConnectTimeout
    ServerTimeoutError, asyncio.TimeoutError  ReadTimeout
    ClientConnectorError                      ConnectError
    ServerDisconnectedError                   RemoteProtocolError
    ClientResponseError (unparsable answer)   RemoteProtocolError
    ClientPayloadError                        ReadError
    ClientOSError, other ClientError          ReadError / TransportError

Response bodies are relayed as aiohttp receives them (``iter_any``), so an SSE stream
stays chunk by chunk. aiohttp has no write timeout; ``connect``, ``read`` and ``pool``
are honoured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]

#: Request headers aiohttp computes itself from the URL and the body.
_COMPUTED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "host"})


def _httpx_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception stock httpx would have raised for aiohttp's ``exc``."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return httpx.ReadError(message)
    return httpx.TransportError(message)


_MAPPED = (aiohttp.ClientError, asyncio.TimeoutError)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _MAPPED as exc:
            raise _httpx_error(exc) from exc

    async def aclose(self) -> None:
        # Back to the pool when the body was read to the end, closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport(limits))``: httpx API, aiohttp I/O."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp sessions belong to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._limits.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=self._limits.keepalive_expiry or 0,
            ssl=httpx.create_ssl_context(),
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes content-encoding itself
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None:
            session = self._session = self._open()
        timeouts = request.extensions.get("timeout", {})
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name not in _COMPUTED_HEADERS
        ]
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
            )
        except _MAPPED as exc:
            raise _httpx_error(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
