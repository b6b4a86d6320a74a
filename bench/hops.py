"""What one round trip between two processes costs on this machine, same core and across.

    bench/.venv/bin/python bench/hops.py

A client and an echo server exchange one byte over loopback TCP, 5 ms apart (so both
sleep in between, as a replica does at 200 req/s), first on one core, then on two. On a
virtual machine a process woken on another core can take far longer than the bytes do;
every hop of a gateway's path (client to replica, replica to Redis, replica to upstream)
pays that, which is why run.py puts the direct path's one hop across cores too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

ROUND_TRIPS = 400
PAUSE_S = 0.005


def serve() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        print(listener.getsockname()[1], flush=True)
        connection, _ = listener.accept()
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := connection.recv(16):
                connection.sendall(data)


def ping(port: int) -> float:
    """Median round trip in microseconds."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            connection.sendall(b"x")
            connection.recv(16)
            samples.append(time.perf_counter() - started)
            time.sleep(PAUSE_S)
    samples.sort()
    return samples[len(samples) // 2] * 1e6


def _pinned(cpu: int, *args: str) -> list[str]:
    return ["taskset", "-c", str(cpu), sys.executable, __file__, *args]


def measure(client_cpu: int, server_cpu: int) -> float:
    """Median round trip (µs) between a client on ``client_cpu`` and a server on
    ``server_cpu``."""
    server_command = _pinned(server_cpu, "serve")
    with subprocess.Popen(server_command, stdout=subprocess.PIPE, text=True) as server:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        client = subprocess.run(
            _pinned(client_cpu, "ping", port), capture_output=True, text=True, check=True
        )
        server.wait(timeout=10)
    return float(client.stdout)


def round_trips() -> dict[str, float]:
    """Median round trips (µs) on one core and across two."""
    return {"same_core_us": round(measure(0, 0), 1), "cross_core_us": round(measure(0, 1), 1)}


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["ping"]:
        print(ping(int(sys.argv[2])))
    else:
        print(json.dumps(round_trips()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
