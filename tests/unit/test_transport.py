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


def client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=10, keepalive_expiry=5)
    return httpx.AsyncClient(transport=AiohttpTransport(limits), timeout=0.5)


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


async def test_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{free_port()}/", content=b"{}")


async def test_silent_upstream_is_a_read_timeout() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            await done.wait()
        finally:
            writer.close()

    server, url = await serve(silent)
    async with server, client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, content=b"{}")
        done.set()


async def test_hang_up_without_answer_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    server, url = await serve(hang_up)
    async with server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, content=b"{}")


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
