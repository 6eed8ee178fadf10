"""``make run`` supervises its children: under a load of logins through the gateway, a SIGKILLed worker and then a
SIGKILLed user store are restarted within seconds while every login gets an answer (a token, or a clear error that
the client retries with a new code from ``wx.login()``); a child that keeps dying stops the whole stack with one
line naming it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import psutil
import pytest

from services.ports import free_ports
from services.processes import Child, GaveUp, Supervisor, is_ready
from tests.conftest import SUMMARY, create_database, drop_database
from tests.stack import Stack

pytestmark = pytest.mark.timeout(120)

#: Logins the load makes at least, and at once.
LOGINS = 300
CONCURRENCY = 24
#: Tries of one login: each retryable answer (503, 504) is retried with a new code, as the README tells a client.
TRIES = 4
#: How long a killed process may take to serve again: restart backoff, Python's start and readiness (5 to 10 s were
#: measured on this 2-core machine while other test runs shared it).
BACK_WITHIN = 30.0


def running_stack(pg_server_url: str, redis_url: str, state_dir: Path, env: dict[str, str]) -> Iterator[Stack]:
    """A stack of its own (``python -m services run``) on the test PostgreSQL and Redis, stopped and dropped after."""
    database_url = asyncio.run(create_database(pg_server_url))
    stack = Stack(state_dir, {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "KEY_PREFIX": _prefix(), **env})
    try:
        yield stack.start()
    finally:
        if stack.process is not None and stack.process.poll() is None:
            stack.stop()
        asyncio.run(drop_database(pg_server_url, database_url))


#: Worker 1's health port in ``two_workers`` (worker 2 takes the next one), and the only worker's in ``one_worker``.
WORKER_PORT = free_ports(1)[0]


@pytest.fixture
def two_workers(pg_server_url: str, redis_url: str, open_tmp: Callable[[str], Path]) -> Iterator[Stack]:
    env = {"AUTH_WORKERS": "2", "WORKER_HTTP_PORT": str(WORKER_PORT)}
    yield from running_stack(pg_server_url, redis_url, open_tmp("supervise") / "state", env)


@pytest.fixture
def one_worker(pg_server_url: str, redis_url: str, open_tmp: Callable[[str], Path]) -> Iterator[Stack]:
    """A stack that gives up on a child after its third death in a minute (instead of the fifth)."""
    env = {"AUTH_WORKERS": "1", "WORKER_HTTP_PORT": str(WORKER_PORT), "RESTART_LIMIT": "3"}
    yield from running_stack(pg_server_url, redis_url, open_tmp("crashloop") / "state", env)


def _prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


@dataclass
class Login:
    openid: str
    #: (status, OAuth error) of each answer, in order; the last one is the login's outcome.
    answers: list[tuple[int, str]] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)
    failure: str = ""

    @property
    def token(self) -> bool:
        return bool(self.answers) and self.answers[-1][0] == 200 and "access_token" in self.body

    @property
    def clear_error(self) -> bool:
        status = self.answers[-1][0] if self.answers else 0
        return 400 <= status < 600 and status != 500 and bool(self.body.get("error_description"))


class Client:
    """Mini programs logging in through the gateway: a code from the sandbox, then the token endpoint; a 503 or 504
    is retried with a new code, a refused connection with the same one (it never reached the gateway)."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, prefix: str) -> None:
        self.stack = stack
        self.http = http
        self.prefix = prefix
        self.logins: list[Login] = []

    async def run(self, minimum: int, until: asyncio.Event) -> None:
        started = 0

        async def one_at_a_time() -> None:
            nonlocal started
            while started < minimum or not until.is_set():
                index = started
                started += 1
                self.logins.append(await self.login(f"{self.prefix}-{index % LOGINS}"))

        await asyncio.gather(*(one_at_a_time() for _ in range(CONCURRENCY)))

    async def reached(self, count: int) -> None:
        for _ in range(3000):
            if len(self.logins) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"only {len(self.logins)} of {count} logins finished in a minute")

    async def login(self, openid: str) -> Login:
        login = Login(openid)
        for _ in range(TRIES):
            async with self.http.post(
                self.stack.sandbox + "/sandbox/login", json={"appid": self.stack.demo["wechatAppId"], "openid": openid}
            ) as resp:
                code = str((await resp.json())["code"])
            form = {"tag": "wechat_miniprogram", "client_id": self.stack.demo["clientId"], "code": code}
            for _ in range(50):
                try:
                    async with self.http.post(self.stack.token_url, data=form) as resp:
                        login.body = await resp.json(content_type=None)
                        login.answers.append((resp.status, str(login.body.get("error", ""))))
                        retry_after = float(resp.headers.get("Retry-After", "0"))
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    login.failure = f"{type(exc).__name__}: {exc}"
                    return login
            else:
                login.failure = "the gateway refused every connection"
                return login
            if login.answers[-1][0] not in (503, 504) or not login.clear_error:
                return login
            await asyncio.sleep(min(retry_after, 0.5))
        return login


def _children(stack: Stack, module: str) -> list[psutil.Process]:
    found = []
    for proc in stack.descendants():
        with contextlib.suppress(psutil.Error):
            if proc.cmdline()[-2:] == ["-m", module]:
                found.append(proc)
    return found


def _kill(stack: Stack, module: str, pick: str = "") -> psutil.Process:
    """SIGKILL the child running ``python -m module`` (whose WORKER_NAME starts with ``pick``, if given)."""
    for proc in _children(stack, module):
        if not pick or proc.environ().get("WORKER_NAME", "").startswith(pick):
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return proc
    raise AssertionError(f"no {module} {pick} under the runner")


async def _back(stack: Stack, module: str, old: psutil.Process, ready_url: str) -> float:
    """Seconds until a new ``python -m module`` runs under the runner and ``ready_url`` answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < BACK_WITHIN:
        if any(proc.pid != old.pid for proc in _children(stack, module)) and await asyncio.to_thread(
            is_ready, ready_url, 0.5
        ):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"{module} was not back within {BACK_WITHIN}s:\n{stack.log_tail()}")


async def _duplicated_users(database_url: str, prefix: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                """
                SELECT coalesce(sum(n - 1), 0) FROM (
                    SELECT count(*) AS n FROM users WHERE properties->>'wechatOpenId' LIKE $1
                    GROUP BY properties->>'wechatOpenId') per_openid
                """,
                f"{prefix}-%",
            )
        )
    finally:
        await conn.close()


def _log_events(stack: Stack, event: str) -> list[dict[str, Any]]:
    lines = []
    for line in stack.log_tail(10_000_000).splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            with contextlib.suppress(ValueError):
                if (parsed := json.loads(line)).get("event") == event:
                    lines.append(parsed)
    return lines


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        yield http


class TestSupervision:
    async def test_killed_worker_and_user_store_come_back_under_load(self, two_workers, http, request):
        """SIGKILL a worker, then the user store, during the load: each is restarted and ready again within
        seconds, the gateway never stops, and every login ends once, as a token or a clear error; no user is made
        twice and no code reaches WeChat twice."""
        stack = two_workers
        async with http.get(stack.sandbox + "/sandbox/stats") as resp:
            before = await resp.json()
        client = Client(stack, http, prefix=_prefix())
        done = asyncio.Event()
        back: dict[str, float] = {}

        async def chaos() -> None:
            try:
                await client.reached(60)
                old = await asyncio.to_thread(_kill, stack, "auth_worker", "worker-1-")
                back["auth_worker"] = await _back(stack, "auth_worker", old, f"http://127.0.0.1:{WORKER_PORT}/readyz")
                await client.reached(len(client.logins) + 60)
                old = await asyncio.to_thread(_kill, stack, "user_store")
                store_ready = f"http://127.0.0.1:{stack.user_store_port}/readyz"
                back["user_store"] = await _back(stack, "user_store", old, store_ready)
                await client.reached(len(client.logins) + 60)
            finally:
                done.set()

        await asyncio.gather(client.run(LOGINS, done), chaos())
        async with http.get(stack.sandbox + "/sandbox/stats") as resp:
            after = await resp.json()
        duplicated = await _duplicated_users(stack.env["DATABASE_URL"], client.prefix)
        assert stack.process is not None and stack.process.poll() is None, "the runner gave up"
        died = [line["process"] for line in _log_events(stack, "process_died")]
        gave_up = _log_events(stack, "process_keeps_dying")

        logins = client.logins
        tokens = sum(login.token for login in logins)
        errors = Counter(
            f"{s} {e}" for login in logins if not login.token and login.clear_error for s, e in login.answers[-1:]
        )
        retried = Counter(f"{s} {e}" for login in logins for s, e in login.answers[:-1])
        lost = [login for login in logins if not login.token and not login.clear_error]
        subs: dict[str, set[str]] = {}
        for login in logins:
            if login.token:
                claims = jwt.decode(login.body["access_token"], options={"verify_signature": False})
                subs.setdefault(login.openid, set()).add(claims["sub"])
        split = sum(len(s) - 1 for s in subs.values())
        double = after["codes_presented_more_than_once"] - before["codes_presented_more_than_once"]
        line = (
            f"supervision: logins={len(logins)} tokens={tokens} clear_errors={sum(errors.values())} {dict(errors)} "
            f"retried={dict(retried)} lost={len(lost)} duplicated_users={duplicated + split} double_exchanges={double} "
            f"worker_back_s={back['auth_worker']:.1f} user_store_back_s={back['user_store']:.1f}"
        )
        request.config.stash.setdefault(SUMMARY, []).append(line)
        print(line)

        assert len(logins) >= LOGINS
        assert not lost, [(login.answers, login.body, login.failure) for login in lost[:5]]
        assert all(len(login.answers) <= TRIES for login in logins)
        assert duplicated == 0 and split == 0
        assert double == 0
        assert tokens >= len(logins) * 0.95, line
        assert died == ["auth-worker-1", "user-store"] and not gave_up, (died, gave_up)

    def test_a_child_that_keeps_dying_stops_everything(self, one_worker):
        """A worker whose port is taken dies at every restart: after RESTART_LIMIT deaths the runner logs one line
        naming it and why, stops the others in order and exits 1, leaving no process behind."""
        stack = one_worker
        children = stack.descendants()
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _kill(stack, "auth_worker")
            squatter.bind(("127.0.0.1", WORKER_PORT))
            squatter.listen()
            assert stack.process is not None
            code = stack.process.wait(60)
        assert code == 1, stack.log_tail()
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [p.pid for p in alive]
        [line] = _log_events(stack, "process_keeps_dying")
        assert line["process"] == "auth-worker-1"
        assert line["reason"] == "auth-worker-1 died 3 times in 60 s (last: exit code 1): stopping every process"
        assert [died["process"] for died in _log_events(stack, "process_died")] == ["auth-worker-1"] * 2
        assert _log_events(stack, "processes_stopped"), stack.log_tail()


class TestSupervisor:
    def test_backoff_doubles_and_old_deaths_leave_the_window(self):
        """A child that exits at once is restarted 0.5 s after its first death, 1 s after its second; deaths older
        than the window no longer count; the third within it gives up, naming the child and its exit."""
        child = Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"], os.environ)
        supervisor = Supervisor([child], limit=3, window=60)

        def restarted_by(now: float) -> bool:
            pid = child.pid
            child.process.wait(30)
            supervisor.check(now)
            return child.pid != pid

        def died_at(now: float) -> None:
            child.process.wait(30)
            supervisor.check(now)

        died_at(100.0)  # first death: back at 100.5
        assert not restarted_by(100.4)
        assert restarted_by(100.5)
        died_at(101.0)  # second death: back 1 s later
        assert not restarted_by(101.9)
        assert restarted_by(102.0)
        died_at(200.0)  # the first two are over a minute old: this one counts as the first again
        assert restarted_by(200.5)
        died_at(201.0)
        assert restarted_by(202.0)
        with pytest.raises(GaveUp) as gave_up:
            died_at(203.0)
        assert gave_up.value.process == "crasher"
        assert gave_up.value.reason == "crasher died 3 times in 60 s (last: exit code 3): stopping every process"
