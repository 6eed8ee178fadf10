"""A load of mini-program logins against a ``Cluster``, and the figures a fault test asserts on.

Each login gets a fresh code from the sandbox (which is never faulted), then posts it to a gateway. Like a load
balancer, a login whose connection is refused or dropped before any answer goes to the next gateway, with the
same code. Every login ends as a token, a clear error (an OAuth JSON error with its status), or lost. All of it
comes from 127.0.0.1, so the cluster raises the per-IP rate limits (``tests/cluster.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import jwt

from tests.cluster import Cluster

#: A login answered later than LOGIN_TIMEOUT plus this has hung (generous: a loaded 2-core machine).
HUNG_SLACK = 3.0


@dataclass
class Result:
    openid: str
    code: str
    request_id: str
    seconds: float = 0.0
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    failure: str = ""
    reconnects: int = 0

    @property
    def token(self) -> bool:
        return self.status == 200 and "access_token" in self.body

    @property
    def clear_error(self) -> bool:
        return (
            self.status is not None
            and 400 <= self.status < 600
            and self.status != 500
            and bool(self.body.get("error"))
            and bool(self.body.get("error_description"))
        )


@dataclass
class Figures:
    requests: int
    tokens: int
    clear_errors: dict[str, int]
    lost: int
    duplicated: int
    double_exchanges: int
    hung: int
    reconnects: int

    @property
    def errors(self) -> int:
        return sum(self.clear_errors.values())

    def line(self, scenario: str) -> str:
        errors = ", ".join(f"{k}×{v}" for k, v in sorted(self.clear_errors.items())) or "none"
        return (
            f"[{scenario}] requests={self.requests} tokens={self.tokens} clear_errors={self.errors} ({errors}) "
            f"lost={self.lost} duplicated={self.duplicated} double_exchanges={self.double_exchanges} "
            f"hung={self.hung} reconnects={self.reconnects}"
        )


class Load:
    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession, *, prefix: str, users: int) -> None:
        self.cluster = cluster
        self.http = http
        self.prefix = prefix
        self.users = users
        self.results: list[Result] = []
        self.finished = 0
        self._stats_before: dict[str, int] = {}

    async def run(self, *, minimum: int, concurrency: int, until: asyncio.Event | None = None) -> None:
        """At least ``minimum`` logins, ``concurrency`` at a time, and more until ``until`` is set."""
        self._stats_before = await self.sandbox_stats()
        started = 0
        lock = asyncio.Lock()

        async def runner() -> None:
            nonlocal started
            while True:
                async with lock:
                    more = started < minimum or (until is not None and not until.is_set())
                    if not more:
                        return
                    index = started
                    started += 1
                self.results.append(await self._login(index))
                self.finished += 1

        await asyncio.gather(*(runner() for _ in range(concurrency)))

    async def reached(self, count: int) -> None:
        """Until ``count`` logins have finished."""
        for _ in range(3000):
            if self.finished >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"only {self.finished} of {count} logins finished in a minute")

    async def _login(self, index: int) -> Result:
        openid = f"{self.prefix}-{index % self.users}"
        async with self.http.post(
            f"{self.cluster.sandbox_url}/sandbox/login", json={"appid": self.cluster.demo_appid, "openid": openid}
        ) as resp:
            code = str((await resp.json())["code"])
        result = Result(openid=openid, code=code, request_id=f"{self.prefix}-{index}")
        data = {"tag": "wechat_miniprogram", "client_id": self.cluster.demo_client_id, "code": code}
        timeout = aiohttp.ClientTimeout(total=self.cluster.login_timeout + HUNG_SLACK + 2)
        start = time.monotonic()
        gateways = len(self.cluster.gateways)
        for attempt in range(gateways * 10):
            url = f"{self.cluster.gateway_url((index + attempt) % gateways)}/api/login/oauth/access_token"
            try:
                async with self.http.post(
                    url, data=data, headers={"X-Request-Id": result.request_id}, timeout=timeout
                ) as resp:
                    result.status = resp.status
                    result.retry_after = resp.headers.get("Retry-After")
                    try:
                        result.body = await resp.json(content_type=None)
                    except ValueError:
                        result.failure = f"not JSON: {(await resp.text())[:200]}"
                break
            except TimeoutError as exc:  # before ClientConnectionError: aiohttp's timeouts are both
                result.failure = f"timeout: {exc!r}"
                break
            except aiohttp.ClientConnectionError:
                # Refused, or dropped before any answer (a gateway going away): the next gateway, same code. Had the
                # first attempt been served, the retry would get the shared answer or a visible invalid_grant.
                result.reconnects += 1
                await asyncio.sleep(0.05)
            except aiohttp.ClientError as exc:
                result.failure = f"{type(exc).__name__}: {exc}"
                break
        else:
            result.failure = "no gateway accepted the connection"
        result.seconds = time.monotonic() - start
        return result

    async def sandbox_stats(self) -> dict[str, int]:
        async with self.http.get(f"{self.cluster.sandbox_url}/sandbox/stats") as resp:
            return dict(await resp.json())

    async def figures(self) -> Figures:
        stats = await self.sandbox_stats()
        double = stats["codes_presented_more_than_once"] - self._stats_before["codes_presented_more_than_once"]
        errors = Counter(f"{r.status} {r.body['error']}" for r in self.results if not r.token and r.clear_error)
        hung_after = self.cluster.login_timeout + HUNG_SLACK
        return Figures(
            requests=len(self.results),
            tokens=sum(r.token for r in self.results),
            clear_errors=dict(errors),
            lost=sum(not r.token and not r.clear_error for r in self.results),
            duplicated=await self._duplicated(),
            double_exchanges=double,
            hung=sum(r.seconds > hung_after for r in self.results),
            reconnects=sum(r.reconnects for r in self.results),
        )

    async def _duplicated(self) -> int:
        """Users beyond one per openid, users without their WeChat identity, and openids answered as two users."""
        subs: dict[str, set[str]] = {}
        for r in self.results:
            if r.token:
                claims = jwt.decode(r.body["access_token"], options={"verify_signature": False})
                subs.setdefault(r.openid, set()).add(claims["sub"])
        split = sum(len(s) - 1 for s in subs.values())
        conn = await asyncpg.connect(self.cluster.database_url)
        try:
            pattern = f"{self.prefix}-%"
            extra = await conn.fetchval(
                """
                SELECT coalesce(sum(n - 1), 0) FROM (
                    SELECT count(*) AS n FROM users WHERE properties->>'wechatOpenId' LIKE $1
                    GROUP BY properties->>'wechatOpenId') per_openid
                """,
                pattern,
            )
            orphans = await conn.fetchval(
                """
                SELECT count(*) FROM users u WHERE u.properties->>'wechatOpenId' LIKE $1
                AND NOT EXISTS (SELECT 1 FROM wechat_identities i WHERE i.user_id = u.id)
                """,
                pattern,
            )
        finally:
            await conn.close()
        return int(split + extra + orphans)

    def lost(self) -> list[Result]:
        return [r for r in self.results if not r.token and not r.clear_error]
