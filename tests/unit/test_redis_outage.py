"""Which errors mean "Redis is out of reach" and which are bugs.

Outages are provoked for real (a killed redis-server, a peer that closes the socket, one
that never answers), so the tests hold whatever a redis-py release calls the error.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.exceptions import ClusterDownError, ConnectionError, RedisClusterException

from tests.support import free_port, start_redis
from tokenlb_proxy.redis_outage import describe_outage, is_outage
from tokenlb_proxy.store.connect import RedisClient, connect_redis


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as exc:  # with its traceback, as callers see it
        return exc


def _error_of(call: Callable[[RedisClient], Awaitable[object]], port: int) -> BaseException:
    """What tokenlb's Redis client raises for ``call`` against 127.0.0.1:``port``."""

    async def run() -> BaseException:
        client = connect_redis(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        try:
            await call(client)
        except Exception as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("the call succeeded")

    return asyncio.run(run())


@pytest.fixture
def hostile_peer() -> Iterator[Callable[[bool], int]]:
    """A TCP server that accepts, then either closes at once or never answers."""
    sockets: list[socket.socket] = []

    def start(close_at_once: bool) -> int:
        server = socket.create_server(("127.0.0.1", 0))
        sockets.append(server)

        def serve() -> None:
            while True:
                try:
                    peer, _ = server.accept()
                except OSError:
                    return
                sockets.append(peer)
                if close_at_once:
                    peer.close()

        threading.Thread(target=serve, daemon=True).start()
        port: int = server.getsockname()[1]
        return port

    yield start
    for sock in sockets:
        sock.close()


def test_a_killed_server_is_an_outage_for_a_pooled_connection(tmp_path: Path) -> None:
    process, port = start_redis(tmp_path)

    async def ping_after_kill(client: RedisClient) -> None:
        await client.ping()  # the pool now holds a live connection
        process.kill()
        await client.ping()

    error = _error_of(ping_after_kill, port)
    assert is_outage(error), repr(error)


@pytest.mark.parametrize("close_at_once", [True, False], ids=["closed-socket", "silent-peer"])
def test_a_peer_that_closes_or_never_answers_is_an_outage(
    hostile_peer: Callable[[bool], int], close_at_once: bool
) -> None:
    error = _error_of(lambda client: client.ping(), hostile_peer(close_at_once))
    assert is_outage(error), repr(error)


def test_a_refused_connection_is_an_outage() -> None:
    assert is_outage(_error_of(lambda client: client.ping(), free_port()))


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("refused"),
        ClusterDownError("CLUSTERDOWN"),
        RedisClusterException("no master serves this slot"),
        ConnectionResetError(),
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),
    ],
)
def test_redis_and_socket_errors_are_outages(error: BaseException) -> None:
    assert is_outage(_raised(error))


def _raised_inside(module: str, error: BaseException) -> BaseException:
    """``error`` raised by a function that lives in ``module`` (its traceback says so)."""
    namespace: dict[str, object] = {"__name__": module}
    exec("def fail(error):\n    raise error\n", namespace)  # noqa: S102 - a fixed snippet
    fail = namespace["fail"]
    assert callable(fail)
    return _raised_by(fail, error)


def _raised_by(fail: Callable[[BaseException], object], error: BaseException) -> BaseException:
    try:
        fail(error)
    except BaseException as exc:
        return exc
    raise AssertionError("not raised")


@pytest.mark.parametrize("error", [AttributeError("_writer"), TypeError("'NoneType'")])
def test_attribute_and_type_errors_from_inside_redis_py_are_outages(error: Exception) -> None:
    """redis-py's asyncio connections have raised these when they raced their own disconnect
    (redis/redis-py#3546, #4287, fixed in 8.2): an outage, not a bug of ours."""
    assert is_outage(_raised_inside("redis.asyncio.connection", error))


@pytest.mark.parametrize("error", [AttributeError("x"), TypeError("y"), KeyError("z")])
def test_the_same_errors_raised_by_our_code_are_bugs(error: BaseException) -> None:
    assert not is_outage(_raised(error))
    assert not is_outage(_raised_inside("tokenlb_proxy.store.redis", error))


def test_an_outage_is_described_on_one_line_without_the_password() -> None:
    error = ConnectionError("Error 111 connecting to h1:6379.\nauth s3cret-pw refused")
    line = describe_outage("redis://app:s3cret-pw@h1:6379/0", error)
    assert line == (
        "Redis at redis://app:***@h1:6379/0 is unreachable "
        "(ConnectionError: Error 111 connecting to h1:6379. auth *** refused)"
    )
