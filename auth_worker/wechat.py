"""WeChat's jscode2session, with WeChat's errors translated to ours where they arise.

The exchange is not idempotent (a code works once), so a code is presented again only after a failure that surely
did not consume it: -1 "system busy", HTTP 5xx, a connection refused before anything was sent. A timeout or a
connection broken after sending is *not* retried: WeChat may have used the code, and asking again could only turn
a lost answer into 40163. The client gets a 503 telling it to call wx.login() again.

Failures that leave the code unused are raised as ``CodeUnspent`` errors, so the caller can release the code for a
retry with the same code. A circuit breaker (``breaker.py``) fails calls fast while WeChat keeps failing.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import msgspec
import structlog

from auth_worker.breaker import CircuitBreaker
from auth_worker.metrics import WorkerMetrics
from shared.errors import Forbidden, InvalidGrant, MinidoorError, RateLimited, Unavailable, UpstreamError

# WeChat errors that mean the application's WeChat credentials (the provider) are wrong, not the user's code.
_CONFIG_ERRORS = {40002, 40013, 40125, 41002, 41004, 41008, 40243, 40164, 61004}


class Session(msgspec.Struct, frozen=True):
    """What jscode2session answers; ``errcode`` absent or 0 means success."""

    openid: str = ""
    session_key: str = ""
    unionid: str = ""
    errcode: int = 0
    errmsg: str = ""


_session_decoder = msgspec.json.Decoder(Session)


class CodeUnspent:
    """Mixin: WeChat surely did not use the code, so the same code may be presented again later."""


class WechatUnavailable(CodeUnspent, Unavailable):
    """WeChat is busy, failing or unreachable (or the breaker is open), and the code was not used."""


class WechatRateLimited(CodeUnspent, RateLimited):
    pass


class WechatConfigError(CodeUnspent, UpstreamError):
    pass


class _Retryable(Exception):
    def __init__(self, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class _Ambiguous(Exception):
    """The request may have reached WeChat, but no answer came back."""

    def __init__(self, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class WechatClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout: float,
        max_attempts: int,
        breaker: CircuitBreaker | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/sns/jscode2session"
        self._timeout = timeout
        self._max_attempts = max_attempts
        self.breaker = breaker or CircuitBreaker(5, 5.0)
        self._metrics = metrics or WorkerMetrics()

    def check_breaker(self) -> None:
        """Raise ``WechatUnavailable`` while the breaker is open (before anything is recorded about the code)."""
        wait = self.breaker.retry_in()
        if wait > 0:
            self._metrics.wechat_calls.labels("circuit_open").inc()
            raise WechatUnavailable(
                "WeChat is failing; not calling it for {wait:.1f}s; try again with the same code",
                retry_after=max(1, math.ceil(wait)),
                wait=wait,
            )

    async def jscode2session(self, appid: str, secret: str, code: str, *, deadline: float) -> Session:
        """Exchange ``code``; retries failures that did not use it, with backoff, while time remains."""
        params = {"appid": appid, "secret": secret, "js_code": code, "grant_type": "authorization_code"}
        backoff = 0.05
        last_reason = "out of time"
        for attempt in range(1, self._max_attempts + 1):
            if deadline - time.time() <= 0.05:
                break
            if attempt > 1:
                self.check_breaker()
            structlog.contextvars.bind_contextvars(wechat_attempts=attempt)
            try:
                result = await self._call_once(params, min(self._timeout, deadline - time.time()))
            except _Retryable as exc:
                last_reason = exc.reason
                structlog.contextvars.bind_contextvars(wechat_error=exc.reason)
                if attempt < self._max_attempts:
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.time() - 0.05)))
                    backoff *= 4
                continue
            except _Ambiguous as exc:
                structlog.contextvars.bind_contextvars(wechat_error=exc.reason)
                raise Unavailable(
                    "WeChat did not answer ({reason}) and may have used the code; call wx.login() again",
                    retry_after=1,
                    reason=exc.reason,
                ) from None
            return _checked(result)
        raise WechatUnavailable(
            "WeChat is not answering ({last_reason}); try again", retry_after=1, last_reason=last_reason
        )

    async def _call_once(self, params: dict[str, str], timeout: float) -> Session:
        start = time.perf_counter()
        try:
            result = await self._request(params, timeout)
        except (_Retryable, _Ambiguous) as exc:
            self._record(exc.outcome, start, wechat_up=False)
            raise
        except UpstreamError:
            self._record("bad_answer", start, wechat_up=True)
            raise
        self._record("ok" if result.errcode == 0 else "errcode", start, wechat_up=True)
        return result

    def _record(self, outcome: str, start: float, *, wechat_up: bool) -> None:
        if wechat_up:
            self.breaker.succeeded()
        else:
            self.breaker.failed()
        self._metrics.wechat_calls.labels(outcome).inc()
        self._metrics.wechat_seconds.observe(time.perf_counter() - start)
        self._metrics.wechat_circuit_open.set(1 if self.breaker.is_open else 0)

    async def _request(self, params: dict[str, str], timeout: float) -> Session:
        try:
            async with self._session.get(
                self._url, params=params, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:
            raise _Ambiguous("timeout", "timeout") from None
        except aiohttp.ClientConnectorError as exc:
            raise _Retryable(f"connection: {type(exc).__name__}", "connection") from None
        except aiohttp.ClientError as exc:
            raise _Ambiguous(f"connection: {type(exc).__name__}", "connection") from None
        if status >= 500:
            raise _Retryable(f"HTTP {status}", "http_5xx")
        if status != 200:
            raise UpstreamError("WeChat answered HTTP {http_status}", http_status=status)
        try:
            result = _session_decoder.decode(body)
        except msgspec.DecodeError:
            raise UpstreamError("WeChat answered with something that is not its JSON") from None
        if result.errcode == -1:
            raise _Retryable("errcode -1 (system busy)", "busy")
        return result


def _checked(result: Session) -> Session:
    code, msg = result.errcode, result.errmsg
    if code == 0:
        if not result.openid and not result.unionid:
            raise MinidoorError("the wechat mini program session is invalid", error="invalid_request", status=400)
        if not result.session_key:
            raise UpstreamError("WeChat answered without a session_key")
        return result
    structlog.contextvars.bind_contextvars(wechat_errcode=code)
    detail = f"WeChat {code}: {msg}"
    if code == 40029:
        raise InvalidGrant("the code is invalid or expired ({detail}); call wx.login() again", detail=detail)
    if code == 40163:
        raise InvalidGrant("the code was already used ({detail}); call wx.login() again", detail=detail)
    if code == 40226:
        raise Forbidden("WeChat blocked this user's login as high-risk ({detail})", detail=detail)
    if code == 45011:
        raise WechatRateLimited("this user logs in too often ({detail}); wait a minute", retry_after=60, detail=detail)
    if code in _CONFIG_ERRORS:
        raise WechatConfigError("WeChat refused the application's mini-program credentials ({detail})", detail=detail)
    raise UpstreamError("WeChat refused the login ({detail})", detail=detail)
