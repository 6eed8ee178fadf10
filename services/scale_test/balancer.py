"""The scale test's ``lb`` host: a TCP balancer in front of the user stores, as a Kubernetes Service would be.

``python -m services.scale_test.balancer LISTEN BACKEND [BACKEND…]`` (each ``address:port``). Each new connection
goes to the next healthy backend, round robin. Each backend's ``/readyz`` is asked every half second, as a
readiness probe would: it turns healthy at its first 200 within two seconds, and unhealthy after three failures in a
row (a busy store on a loaded machine may miss one). When a backend turns unhealthy, the connections it carries are
closed, so callers see a closed connection and retry instead of waiting on a host that stopped answering. It logs
nothing per connection: a line when a backend's health changes, and each backend's connections at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass, field

CHECK_EVERY = 0.5
CHECK_TIMEOUT = 2.0
FAILURES_TO_DROP = 3
CONNECT_TIMEOUT = 1.0
_CHUNK = 65536


@dataclass(eq=False)
class Backend:
    host: str
    port: int
    healthy: bool = False
    connections: int = 0
    open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected address:port, got {text!r}")
    return host, int(port)


class RoundRobin:
    """The next healthy backend after the last one chosen; None when none is healthy."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._next = 0

    def choose(self) -> Backend | None:
        for _ in range(len(self.backends)):
            backend = self.backends[self._next % len(self.backends)]
            self._next += 1
            if backend.healthy:
                return backend
        return None


async def check_health(backend: Backend) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            try:
                writer.write(f"GET /readyz HTTP/1.1\r\nHost: {backend.name}\r\nConnection: close\r\n\r\n".encode())
                status_line = await reader.readline()
            finally:
                writer.close()
        return status_line.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError, IndexError):
        return False


async def _watch(backend: Backend) -> None:
    failures = 0
    while True:
        ok = await check_health(backend)
        failures = 0 if ok else failures + 1
        healthy = ok or (backend.healthy and failures < FAILURES_TO_DROP)
        if healthy != backend.healthy:
            backend.healthy = healthy
            print(f"balancer: {backend.name} {'healthy' if healthy else 'unhealthy'}", file=sys.stderr, flush=True)
            if not healthy:
                for writer in list(backend.open):
                    writer.transport.abort()
        await asyncio.sleep(CHECK_EVERY)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        writer.close()  # one side gone: the other's reader sees it and closes its side too


async def _serve(balancer: RoundRobin, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    backend = balancer.choose()
    if backend is None:
        client_w.transport.abort()
        return
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            server_r, server_w = await asyncio.open_connection(backend.host, backend.port)
    except (OSError, TimeoutError):
        client_w.transport.abort()
        return
    backend.connections += 1
    backend.open.update((client_w, server_w))
    try:
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
    finally:
        backend.open.discard(client_w)
        backend.open.discard(server_w)


async def run(listen: str, backends: list[str]) -> None:
    host, port = parse_address(listen)
    pool = [Backend(*parse_address(b)) for b in backends]
    balancer = RoundRobin(pool)
    watchers = [asyncio.create_task(_watch(b)) for b in pool]
    server = await asyncio.start_server(lambda r, w: _serve(balancer, r, w), host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"balancer: listening on {listen}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    for task in watchers:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    counts = " ".join(f"{b.name}={b.connections}" for b in pool)
    print(f"balancer: connections {counts}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m services.scale_test.balancer LISTEN BACKEND [BACKEND…]", file=sys.stderr)
        return 2
    asyncio.run(run(argv[0], argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
