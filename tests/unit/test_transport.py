"""The aiohttp transport raises what stock httpx raises, so failover criteria keep meaning.

``error`` and ``timeout`` in ``failover_criteria`` are told apart by the httpx exception
class; a transport that called a refused connection a timeout would change which
failures fail over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.support import free_port
from tokenlb_proxy.transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


LIMITS = httpx.Limits(max_connections=10, keepalive_expiry=5)
TIMEOUT = httpx.Timeout(0.5)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(LIMITS), timeout=TIMEOUT)


async def post(way: str, url: str, body: bytes) -> httpx.Response:
    """POST through an httpx client over the transport, or the proxy's way: ``send``."""
    if way == "client":
        async with client() as http:
            return await http.post(url, content=body)
    transport = AiohttpTransport(LIMITS)
    try:
        return await transport.send(
            url, headers={}, body=body, params={}, timeouts=TIMEOUT, stream=False
        )
    finally:
        await transport.aclose()


WAYS = pytest.mark.parametrize("way", ["client", "send"])


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@WAYS
async def test_refused_connection_is_a_connect_error_not_a_timeout(way: str) -> None:
    with pytest.raises(httpx.ConnectError):
        await post(way, f"http://127.0.0.1:{free_port()}/", b"{}")


@WAYS
async def test_silent_upstream_is_a_read_timeout(way: str) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            await done.wait()
        finally:
            writer.close()

    server, url = await serve(silent)
    async with server:
        with pytest.raises(httpx.ReadTimeout):
            await post(way, url, b"{}")
        done.set()


@WAYS
async def test_hang_up_without_answer_is_a_protocol_error(way: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    server, url = await serve(hang_up)
    async with server:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(way, url, b"{}")


async def test_request_and_response_pass_through_and_streams_arrive_chunk_by_chunk() -> None:
    seen: list[bytes] = []
    release = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: r1\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await serve(sse)
    async with server, client() as http:
        request = http.build_request(
            "POST", url, content=b'{"a":1}', headers={"authorization": "Bearer k"}
        )
        response = await http.send(request, stream=True)
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "r1"
        chunks: AsyncIterator[bytes] = response.aiter_bytes()
        # The first event arrives while the upstream still holds back the second.
        assert await asyncio.wait_for(anext(chunks), 2) == b"data: first\n\n"
        release.set()
        assert [chunk async for chunk in chunks] == [b"data: second\n\n"]
        await response.aclose()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert body == b'{"a":1}'
    assert b"authorization: Bearer k" in head.lower().replace(b"bearer", b"Bearer")


async def test_send_adds_the_query_and_returns_a_read_response() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
            b'retry-after: 3\r\ncontent-length: 12\r\n\r\n{"e":"slow"}'
        )
        await writer.drain()
        writer.close()

    server, url = await serve(answer)
    transport = AiohttpTransport(LIMITS)
    async with server:
        response = await transport.send(
            url,
            headers={"api-key": "k1"},
            body=b'{"a":1}',
            params={"key": "v 1"},
            timeouts=TIMEOUT,
            stream=False,
        )
        await transport.aclose()
    assert (response.status_code, response.content) == (429, b'{"e":"slow"}')
    assert response.headers["retry-after"] == "3"
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions?key=v+1 HTTP/1.1")
    assert b"api-key: k1" in head.lower()
    assert body == b'{"a":1}'


async def test_send_streams_chunk_by_chunk() -> None:
    release = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\nd\r\ndata: first\n\n\r\n"
        )
        await writer.drain()
        await release.wait()
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await serve(sse)
    transport = AiohttpTransport(LIMITS)
    async with server:
        response = await transport.send(
            url, headers={}, body=b"{}", params={}, timeouts=TIMEOUT, stream=True
        )
        chunks: AsyncIterator[bytes] = response.aiter_bytes()
        assert await asyncio.wait_for(anext(chunks), 2) == b"data: first\n\n"
        release.set()
        assert [chunk async for chunk in chunks] == [b"data: second\n\n"]
        await response.aclose()
        await transport.aclose()
