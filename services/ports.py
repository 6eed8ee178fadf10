"""Free TCP ports on 127.0.0.1, for stacks started on a shared machine (tests, benchmarks).

A port is chosen below the kernel's ephemeral range (``ip_local_port_range``), from which every outgoing
connection takes its source port: a port from inside that range, free when chosen, is often taken by some client's
connection (to Redis, to PostgreSQL) before the service binds it, and the service then fails with "address already
in use". Below the range only another listener can take it, and the choice is random, so two stacks started at
once rarely pick the same port; each is checked free by binding it.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

#: Where listeners are chosen when the ephemeral range cannot be read or leaves too little room below it.
_FALLBACK = (20000, 32767)
_LOWEST = 10000


def _listener_range() -> tuple[int, int]:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK
    return (_LOWEST, low - 1) if low - _LOWEST >= 2000 else _FALLBACK


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago. They are held open together while chosen, so one stack's
    services never get the same port."""
    low, high = _listener_range()
    rng = random.SystemRandom()
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(200 * count):
            if len(ports) == count:
                return ports
            port = rng.randint(low, high)
            if port in ports:
                continue
            sock = held.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    raise RuntimeError(f"no {count} free ports between {low} and {high}")


def free_port() -> int:
    return free_ports(1)[0]
