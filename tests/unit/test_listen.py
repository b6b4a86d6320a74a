"""Binding a replica's addresses before anything starts (``listen.py``)."""

from __future__ import annotations

import socket

import pytest

from tokenlb_proxy.listen import CannotListen, bind_all, format_address


def test_a_failed_address_releases_the_ones_bound_before_it() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            free = spare.getsockname()[1]

        with pytest.raises(CannotListen) as raised:
            bind_all([("127.0.0.1", free), ("127.0.0.1", taken)])

    assert str(raised.value).startswith(f"cannot listen on 127.0.0.1:{taken}: ")
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", taken)
    # The first address was bound, then released: it can be bound again at once.
    with socket.socket() as again:
        again.bind(("127.0.0.1", free))


def test_bound_sockets_are_returned_in_order_and_not_yet_listening() -> None:
    first, second = bind_all([("127.0.0.1", 0), ("127.0.0.1", 0)])
    try:
        port = second.getsockname()[1]
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
    finally:
        first.close()
        second.close()


def test_ipv6_addresses_are_written_in_brackets() -> None:
    assert format_address("::1", 8000) == "[::1]:8000"
    assert format_address("127.0.0.1", 8000) == "127.0.0.1:8000"
