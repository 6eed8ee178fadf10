"""Measuring: rates over a fixed window after a warm-up, for HTTP (a closed loop of concurrent clients) and for CPU
(one coroutine on one core), plus what every benchmark returns and receives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from services.bench.stack import BenchStack


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    rate: float
    baseline_name: str
    baseline_rate: float
    unit: str = "/s"
    #: A breakdown of ``rate`` (name, amount in ``unit``), printed under the row.
    parts: tuple[tuple[str, float], ...] = ()
    #: What a reader must know to trust the row (a shortened window, what was not counted).
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.rate / self.baseline_rate if self.baseline_rate else 0.0


@dataclass
class BenchContext:
    """What benchmarks share: the measuring window, and one stack started on first use and stopped at the end."""

    duration: float = 5.0
    warmup: float = 1.0
    concurrency: int = 32
    _stack: BenchStack | None = field(default=None, repr=False)

    async def stack(self) -> BenchStack:
        if self._stack is None:
            self._stack = await asyncio.to_thread(BenchStack(AUTH_WORKERS="1").start)
        return self._stack

    def close(self) -> None:
        if self._stack is not None:
            self._stack.stop()


Request = Callable[[aiohttp.ClientSession], Awaitable[None]]


async def http_rate(request: Request, ctx: BenchContext) -> float:
    """Completed requests per second with ``ctx.concurrency`` in flight; ``request`` raises on a wrong answer."""
    done = 0
    started = time.perf_counter()
    window_start, window_end = started + ctx.warmup, started + ctx.warmup + ctx.duration
    connector = aiohttp.TCPConnector(limit=ctx.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal done
            while (now := time.perf_counter()) < window_end:
                await request(session)
                if now >= window_start:
                    done += 1

        await asyncio.gather(*(client() for _ in range(ctx.concurrency)))
    return done / ctx.duration


async def cpu_rate(step: Callable[[], Awaitable[object]], ctx: BenchContext) -> float:
    """Calls of ``step`` per second in one coroutine, so on one core."""
    deadline = time.perf_counter() + ctx.warmup
    while time.perf_counter() < deadline:
        await step()
    done, started = 0, time.perf_counter()
    deadline = started + ctx.duration
    while True:
        for _ in range(64):
            await step()
        done += 64
        if (now := time.perf_counter()) >= deadline:
            return done / (now - started)
