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

The proxy calls ``send`` on one shared transport instead of going through an
``httpx.AsyncClient``: the client's layers (building and re-parsing the URL, merging
defaults, auth and redirect flows, a cookie jar, event hooks) cost about 40% of an upstream
call's CPU and do nothing a gateway wants. Worse, a shared cookie jar would hand one
caller's upstream cookies to the next caller's requests. ``send`` still speaks httpx
(``httpx.Response``, httpx timeouts and exceptions); ``handle_async_request`` keeps the
transport usable under a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from yarl import URL

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
#: Bound on the parse caches, in case URLs ever come from requests rather than config.
_MAX_CACHED_URLS = 1024


def _httpx_response(
    response: aiohttp.ClientResponse,
    request: httpx.Request | None,
    *,
    stream: httpx.AsyncByteStream | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """httpx's response for aiohttp's: streaming from ``stream``, or read as ``content``."""
    return httpx.Response(
        status_code=response.status,
        headers=response.raw_headers,
        stream=stream,
        content=content,
        request=request,
        extensions={
            "http_version": b"HTTP/1.1",
            "reason_phrase": (response.reason or "").encode(),
        },
    )


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
        # Parsed once per upstream URL and per timeout: the targets of a config are few.
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

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
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        response = await self._request(
            request.method,
            str(request.url),
            [
                (name, value)
                for name, value in request.headers.multi_items()
                if name not in _COMPUTED_HEADERS
            ],
            body,
            self._timeout(request.extensions.get("timeout", {})),
        )
        return _httpx_response(response, request, stream=_ResponseStream(response))

    async def send(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        params: Mapping[str, str],
        timeouts: httpx.Timeout,
        stream: bool,
    ) -> httpx.Response:
        """POST ``body`` to ``url`` (plus ``params``); the body read already unless
        ``stream``, in which case the caller reads or closes the response."""
        target = self._urls.get(url)
        if target is None:
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            target = self._urls[url] = URL(url)
        if params:
            target = target.update_query(params)
        response = await self._request(
            "POST", target, headers, body, self._timeout(timeouts.as_dict())
        )
        if stream:
            return _httpx_response(response, None, stream=_ResponseStream(response))
        try:
            content = await response.read()
        except _MAPPED as exc:
            response.close()
            raise _httpx_error(exc) from exc
        finally:
            response.release()
        return _httpx_response(response, None, content=content)

    async def _request(
        self,
        method: str,
        url: str | URL,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes,
        timeouts: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        session = self._session
        if session is None:
            session = self._session = self._open()
        try:
            return await session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=timeouts,
            )
        except _MAPPED as exc:
            raise _httpx_error(exc) from exc

    def _timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """aiohttp's timeout for httpx's, made once per distinct value (one per balancer)."""
        key = (timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            pool, connect, read = key
            timeout = aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            )
            if len(self._timeouts) < _MAX_CACHED_URLS:
                self._timeouts[key] = timeout
        return timeout

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
