"""The scale test's load, run on the ``load`` host: ``python -m services.scale_test.load`` reads a ``LoadSpec`` as JSON
on stdin, prints ``progress N`` as logins finish and one ``result {json}`` line (a ``LoadResult``) at the end.

Each login gets a fresh code from the WeChat sandbox, then posts it to a gateway (login i to gateway i mod n). A
login that gets no answer from its gateway (connection refused or not made within a second and a half, dropped, or
no answer within ``LOGIN_TIMEOUT`` + ``HUNG_SLACK``, the client's deadline on one gateway) is retried once on the
next gateway with the same code, as a mini program's retry would: it must get the same token or a clear error, never
a second exchange. Introspections of live tokens run beside the logins, spread and retried the same way. Every
attempt that met its deadline unanswered is reported (``Waited``): the runs count it as hung unless its gateway's
link was cut meanwhile. Nothing here logs per request.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import msgspec

#: A client waits this long past LOGIN_TIMEOUT for a gateway's answer (generous: eleven processes on two cores).
HUNG_SLACK = 3.0
CONNECT_TIMEOUT = 1.5
TOKEN_PATH = "/api/login/oauth/access_token"
INTROSPECT_PATH = "/api/login/oauth/introspect"


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    gateways: list[str]
    sandbox: str
    appid: str
    client_id: str
    client_secret: str
    #: One openid per login, in order; a returning user's appears in an earlier run or earlier here.
    openids: list[str]
    introspections: int
    #: Live tokens introspection may start with, before this load's logins have made any.
    tokens: list[str] = []
    login_timeout: float = 10.0
    concurrency: int = 48
    introspection_concurrency: int = 8
    #: How many of this load's tokens to hand back (the warm-up's feed the next runs' introspections).
    keep_tokens: int = 0


class Waited(msgspec.Struct, frozen=True, array_like=True):
    """An attempt that met its deadline unanswered: the gateway's index, and when (Unix time) it began and ended."""

    gateway: int
    began: float
    ended: float


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    logins: int
    tokens: int
    clear_errors: dict[str, int]
    lost: int
    waited: list[Waited]
    #: Logins retried on the other gateway, and what the retry got.
    retried: int
    retried_tokens: int
    retried_errors: int
    #: openids answered as more than one user (``sub``), beyond the first.
    split_users: int
    introspections: int
    introspections_active: int
    introspection_errors: dict[str, int]
    introspections_lost: int
    lost_samples: list[str]
    kept_tokens: list[str]


@dataclass
class _Answer:
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    failure: str = ""

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def token(self) -> str:
        return str(self.body.get("access_token", "")) if self.status == 200 else ""

    @property
    def clear_error(self) -> bool:
        """4xx or 503/504 with an OAuth error a client can act on."""
        return (
            self.status is not None
            and (400 <= self.status < 500 or self.status in (503, 504))
            and bool(self.body.get("error"))
            and bool(self.body.get("error_description"))
        )


def classify(answer: _Answer) -> str:
    """``token``, ``clear`` or ``lost`` (no answer, or one a client cannot act on)."""
    if answer.token:
        return "token"
    return "clear" if answer.clear_error else "lost"


class Load:
    def __init__(self, spec: LoadSpec, http: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.http = http
        self.attempt_timeout = spec.login_timeout + HUNG_SLACK
        self.finished = 0
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.waited: list[Waited] = []
        self.retried = Counter[str]()
        self.subs: dict[str, set[str]] = {}
        self.live: list[str] = list(spec.tokens)
        self.kept: list[str] = []
        self.lost_samples: list[str] = []
        self.intro: Counter[str] = Counter()
        self.intro_errors: Counter[str] = Counter()

    async def run(self) -> LoadResult:
        queue = iter(enumerate(self.spec.openids))
        logins_done = asyncio.Event()

        async def login_client() -> None:
            for index, openid in queue:
                await self._login(index, openid)
                self.finished += 1
                if self.finished % 100 == 0:
                    print(f"progress {self.finished}", flush=True)

        intro_queue = iter(range(self.spec.introspections))

        async def introspection_client() -> None:
            for index in intro_queue:
                while not self.live:
                    if logins_done.is_set():
                        self.intro["lost"] += 1
                        break
                    await asyncio.sleep(0.05)  # waits for a first token: polled, nothing else signals it
                else:
                    await self._introspect(index, self.live[index % len(self.live)])
                # Spread over the logins' time rather than all at their start.
                await asyncio.sleep(0.01 * self.spec.introspection_concurrency)

        async def logins() -> None:
            await asyncio.gather(*(login_client() for _ in range(self.spec.concurrency)))
            logins_done.set()

        await asyncio.gather(logins(), *(introspection_client() for _ in range(self.spec.introspection_concurrency)))
        return self._result()

    async def _post(self, gateway: int, path: str, data: dict[str, str]) -> _Answer:
        timeout = aiohttp.ClientTimeout(total=self.attempt_timeout, sock_connect=CONNECT_TIMEOUT)
        url = self.spec.gateways[gateway % len(self.spec.gateways)] + path
        answer = _Answer()
        start = time.monotonic()
        began = time.time()
        try:
            async with self.http.post(url, data=data, timeout=timeout) as resp:
                raw = await resp.read()
                answer.status = resp.status
                try:
                    answer.body = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    answer.failure = f"not JSON: {raw[:120]!r}"
        except aiohttp.ConnectionTimeoutError:  # before TimeoutError: not sent, nobody waited on an answer
            answer.failure = "connect timeout"
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            answer.failure = "timeout"
            self.waited.append(Waited(gateway % len(self.spec.gateways), began, time.time()))
        except aiohttp.ClientError as exc:
            answer.failure = type(exc).__name__
        answer.seconds = time.monotonic() - start
        return answer

    async def _login(self, index: int, openid: str) -> None:
        async with self.http.post(
            f"{self.spec.sandbox}/sandbox/login", json={"appid": self.spec.appid, "openid": openid}
        ) as r:
            code = str((await r.json())["code"])
        data = {"tag": "wechat_miniprogram", "client_id": self.spec.client_id, "code": code}
        answer = await self._post(index, TOKEN_PATH, data)
        if not answer.answered:
            answer = await self._post(index + 1, TOKEN_PATH, data)
            self.retried[classify(answer)] += 1
        outcome = classify(answer)
        self.outcomes[outcome] += 1
        if outcome == "token":
            claims = jwt.decode(answer.token, options={"verify_signature": False})
            self.subs.setdefault(openid, set()).add(str(claims["sub"]))
            self.live.append(answer.token)
            if len(self.kept) < self.spec.keep_tokens:
                self.kept.append(answer.token)
        elif outcome == "clear":
            self.errors[f"{answer.status} {answer.body['error']}"] += 1
        elif len(self.lost_samples) < 5:
            self.lost_samples.append(f"{answer.status} {answer.failure or answer.body}"[:200])

    async def _introspect(self, index: int, token: str) -> None:
        data = {"token": token, "client_id": self.spec.client_id, "client_secret": self.spec.client_secret}
        answer = await self._post(index, INTROSPECT_PATH, data)
        if not answer.answered:
            answer = await self._post(index + 1, INTROSPECT_PATH, data)
        if answer.status == 200 and "active" in answer.body:
            self.intro["active" if answer.body["active"] else "inactive"] += 1
        elif answer.clear_error:
            self.intro_errors[f"{answer.status} {answer.body['error']}"] += 1
        else:
            self.intro["lost"] += 1
            if len(self.lost_samples) < 5:
                self.lost_samples.append(f"introspect {answer.status} {answer.failure or answer.body}"[:200])

    def _result(self) -> LoadResult:
        return LoadResult(
            logins=self.outcomes.total(),
            tokens=self.outcomes["token"],
            clear_errors=dict(self.errors),
            lost=self.outcomes["lost"],
            waited=self.waited,
            retried=self.retried.total(),
            retried_tokens=self.retried["token"],
            retried_errors=self.retried["clear"],
            split_users=sum(len(s) - 1 for s in self.subs.values()),
            introspections=self.spec.introspections,
            introspections_active=self.intro["active"],
            introspection_errors=dict(self.intro_errors),
            introspections_lost=self.intro["lost"],
            lost_samples=self.lost_samples,
            kept_tokens=self.kept,
        )


async def run(spec: LoadSpec) -> LoadResult:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        return await Load(spec, http).run()


def main() -> int:
    spec = msgspec.json.decode(sys.stdin.buffer.read(), type=LoadSpec)
    result = asyncio.run(run(spec))
    sys.stdout.write("result " + msgspec.json.encode(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
