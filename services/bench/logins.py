"""Mini-program logins per second through the real path (gateway -> Redis stream -> auth worker -> WeChat sandbox
-> user store -> PostgreSQL -> reply), and the CPU milliseconds the stack spends per login, each beside the same
form POST to a trivial aiohttp endpoint.

wx.login() codes come from the sandbox before the measured window, so minting them costs the window nothing. The
warm-up logs in fresh users; they are the window's returning users, so its logins mix sign-ups and sign-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from services.bench.baseline import baseline_server
from services.bench.cpu import StackCpu, process_seconds
from services.bench.harness import BenchContext, Result
from services.bench.stack import BenchStack
from shared.config import RunnerConfig, load_config

#: Share of the window's logins by users who logged in before (the rest sign up).
RETURNING_SHARE = 0.75
#: Logins per returning openid in one window: half the sandbox's (and WeChat's) 100 jscode2session calls a minute.
_MAX_USES = 50
#: Codes live 5 minutes and are all minted before the window.
_MAX_DURATION = 240.0
#: Pool size over the warm-up rate times the window: room for a faster window before the pool runs dry.
_HEADROOM = 1.5
_TOKEN_PATH = "/api/login/oauth/access_token"
_BASELINE = "trivial aiohttp endpoint"


@dataclass(frozen=True, slots=True)
class _Window:
    done: int
    seconds: float
    #: CPU seconds spent in the window, by component.
    cpu: dict[str, float]
    #: The window stopped early: the code pool ran out (logins only).
    ran_dry: bool


class _Logins:
    """Posts the login form once per code of its pool; ``send`` is False when the pool is empty."""

    def __init__(self, url: str, client_id: str, codes: deque[str] | None = None) -> None:
        self.url = url
        self.client_id = client_id
        # None: the baseline, which takes any code and never runs out.
        self.codes = codes

    async def send(self, session: aiohttp.ClientSession) -> bool:
        if self.codes is None:
            code = "baseline"
        elif self.codes:
            code = self.codes.popleft()
        else:
            return False
        form = {"tag": "wechat_miniprogram", "client_id": self.client_id, "code": code}
        async with session.post(self.url, data=form) as resp:
            body = await resp.read()
        if resp.status != 200 or b'"access_token":"' not in body:
            raise RuntimeError(f"{self.url} answered {resp.status}: {body[:300]!r}")
        return True


async def logins_over_http(ctx: BenchContext) -> list[Result]:
    """Logins per second with ``ctx.concurrency`` in flight, and the stack's CPU-ms per login (by component),
    beside the same requests to a trivial aiohttp endpoint and its CPU-ms per request."""
    if ctx.duration > _MAX_DURATION:
        raise ValueError(
            f"codes are minted before the window and live 5 minutes: --duration {_MAX_DURATION:.0f} at most"
        )
    stack = await ctx.stack()
    client_id = stack.demo["clientId"]
    cpu = StackCpu.of(stack)
    ramp = min(ctx.warmup, 0.5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ctx.concurrency)) as session:
        returning, rate = await _warm_up(session, stack, ctx)
        size = math.ceil(rate * (ramp + ctx.duration) * _HEADROOM) + 2 * ctx.concurrency
        openids, new_users = _mix(returning, size)
        codes = await _mint(session, stack, openids, ctx.concurrency)
    logins = await _measure(_Logins(stack.gateway + _TOKEN_PATH, client_id, codes), ctx, ramp, cpu.seconds)
    with baseline_server() as server:
        trivial = _Logins(server.url + _TOKEN_PATH, client_id)
        base = await _measure(trivial, ctx, ctx.warmup, lambda: {"baseline": process_seconds(server.pid)})

    workers = load_config(RunnerConfig, stack.env).auth_workers
    notes = [f"auth workers: {workers}; new users: {new_users / size:.0%} of logins"]
    if logins.ran_dry:
        notes.append(f"the code pool ran dry: measured over {logins.seconds:.1f}s of {ctx.duration:g}s")
    per_login = {name: 1000 * seconds / logins.done for name, seconds in logins.cpu.items()}
    unseen = "not counted: " + ", ".join(cpu.unseen) if cpu.unseen else ""
    return [
        Result(
            "login over HTTP", logins.done / logins.seconds, _BASELINE, base.done / base.seconds, note="; ".join(notes)
        ),
        Result(
            "login: stack CPU per login",
            sum(per_login.values()),
            _BASELINE + " (CPU)",
            1000 * sum(base.cpu.values()) / base.done,
            unit="ms",
            parts=tuple(per_login.items()),
            note=unseen,
        ),
    ]


async def _warm_up(session: aiohttp.ClientSession, stack: BenchStack, ctx: BenchContext) -> tuple[list[str], float]:
    """Log in fresh users in batches for ``ctx.warmup`` seconds (at least one batch); return them and the login rate
    of the last batch."""
    users: list[str] = []
    batch, spent = 4 * ctx.concurrency, 0.0
    while True:
        openids = [_new_openid() for _ in range(batch)]
        codes = await _mint(session, stack, openids, ctx.concurrency)
        logins = _Logins(stack.gateway + _TOKEN_PATH, stack.demo["clientId"], codes)
        started = time.perf_counter()
        await asyncio.gather(*(_drain(logins, session) for _ in range(ctx.concurrency)))
        elapsed = time.perf_counter() - started
        users += openids
        spent += elapsed
        rate = batch / elapsed
        if spent >= ctx.warmup:
            return users, rate
        batch = max(batch, math.ceil(rate * min(ctx.warmup - spent, 1.0)))


async def _drain(logins: _Logins, session: aiohttp.ClientSession) -> None:
    while await logins.send(session):
        pass


def _mix(returning: list[str], size: int) -> tuple[list[str], int]:
    """``size`` openids, ``RETURNING_SHARE`` of them taken in turn from ``returning`` (each at most ``_MAX_USES``
    times), the rest new; returns them and how many are new."""
    openids: list[str] = []
    reused = 0
    for i in range(size):
        if (i + 1) * RETURNING_SHARE >= reused + 1 and reused < _MAX_USES * len(returning):
            openids.append(returning[reused % len(returning)])
            reused += 1
        else:
            openids.append(_new_openid())
    return openids, size - reused


async def _mint(session: aiohttp.ClientSession, stack: BenchStack, openids: list[str], concurrency: int) -> deque[str]:
    """One sandbox ``wx.login()`` code per openid, in order."""
    codes = [""] * len(openids)
    pending = iter(enumerate(openids))
    appid = stack.demo["wechatAppId"]

    async def minter() -> None:
        for i, openid in pending:
            async with session.post(stack.sandbox + "/sandbox/login", json={"appid": appid, "openid": openid}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"the sandbox minted no code: {resp.status} {await resp.text()}")
                codes[i] = (await resp.json())["code"]

    await asyncio.gather(*(minter() for _ in range(concurrency)))
    return deque(codes)


async def _measure(logins: _Logins, ctx: BenchContext, ramp: float, cpu: Callable[[], dict[str, float]]) -> _Window:
    """A closed loop of ``ctx.concurrency`` clients; after ``ramp`` seconds, a window of ``ctx.duration`` seconds
    (shorter if the codes run out) whose completed logins and CPU are counted. Raises on any wrong answer."""
    finished: list[float] = []
    dry, stop = asyncio.Event(), asyncio.Event()
    bounds: list[float] = []
    spent: list[dict[str, float]] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            if not await logins.send(session):
                dry.set()
                return
            finished.append(time.perf_counter())

    async def clock() -> None:
        await _sleep_unless(dry, ramp)
        if dry.is_set():
            raise RuntimeError("the code pool ran dry before the window opened; try a longer --warmup")
        spent.append(cpu())
        bounds.append(time.perf_counter())
        await _sleep_unless(dry, ctx.duration)
        spent.append(cpu())
        bounds.append(time.perf_counter())
        stop.set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ctx.concurrency)) as session:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(clock())
                for _ in range(ctx.concurrency):
                    group.create_task(client(session))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
    start, end = bounds
    before, after = spent
    done = sum(start <= at <= end for at in finished)
    if not done:
        raise RuntimeError("no login finished within the window; try a longer --duration")
    cpu_used = {name: after[name] - before[name] for name in after}
    return _Window(done, end - start, cpu_used, dry.is_set())


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _new_openid() -> str:
    """A user nobody has seen, even on a database that outlives the run."""
    return "o-bench-" + secrets.token_urlsafe(15)
