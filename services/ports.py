"""Free TCP ports on 127.0.0.1, for stacks started on a shared machine (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago. They are held open together while chosen: asked one at a
    time, the kernel may hand the same port out twice, and two services of one stack would collide."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    return free_ports(1)[0]
