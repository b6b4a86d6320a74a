"""Which errors mean "Redis is out of reach" and which are bugs."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ClusterDownError, ConnectionError, RedisClusterException

from tokenlb_proxy.redis_outage import is_outage


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as exc:  # with its traceback, as callers see it
        return exc


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


def test_redis_py_racing_its_own_disconnect_is_an_outage() -> None:
    """The error a Redis Cluster replica logged as a bug when a master died: a connection
    whose writer its disconnect had already dropped."""

    async def write_without_a_writer() -> BaseException:
        connection = Connection(host="127.0.0.1", port=1)
        try:
            await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
        except AttributeError as exc:
            return exc
        raise AssertionError("redis-py wrote without a writer")

    error = asyncio.run(write_without_a_writer())
    assert "writelines" in str(error)
    assert is_outage(error)


@pytest.mark.parametrize("error", [AttributeError("x"), TypeError("y"), KeyError("z")])
def test_the_same_errors_raised_by_our_code_are_bugs(error: BaseException) -> None:
    assert not is_outage(_raised(error))
