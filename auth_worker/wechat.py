"""WeChat's jscode2session, with WeChat's errors translated to ours where they arise.

The exchange is not idempotent (a code works once), so only failures that surely did not consume the code are
retried blindly: -1 "system busy" and HTTP 5xx. A timeout or broken connection is retried too, because the job
would fail otherwise, but a 40163 "code been used" after such an attempt is reported as WeChat's fault, not the
client's.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec
import structlog

from shared.errors import Forbidden, InvalidGrant, MinidoorError, RateLimited, Unavailable, UpstreamError

log = structlog.get_logger()

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


class _Retryable(Exception):
    def __init__(self, reason: str, ambiguous: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True when WeChat may have consumed the code (timeout, broken connection).
        self.ambiguous = ambiguous


class WechatClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, timeout: float, max_attempts: int) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/sns/jscode2session"
        self._timeout = timeout
        self._max_attempts = max_attempts

    async def jscode2session(self, appid: str, secret: str, code: str, *, deadline: float) -> Session:
        """Exchange ``code``; retries transient failures with backoff while time remains before ``deadline``."""
        params = {"appid": appid, "secret": secret, "js_code": code, "grant_type": "authorization_code"}
        backoff = 0.05
        ambiguous = False
        last_reason = ""
        for attempt in range(1, self._max_attempts + 1):
            remaining = deadline - time.time()
            if remaining <= 0.05:
                break
            try:
                result = await self._call_once(params, min(self._timeout, remaining))
            except _Retryable as exc:
                ambiguous = ambiguous or exc.ambiguous
                last_reason = exc.reason
                log.warning("wechat_retry", attempt=attempt, reason=exc.reason)
                if attempt < self._max_attempts:
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.time() - 0.05)))
                    backoff *= 4
                continue
            if result.errcode == 40163 and ambiguous:
                raise Unavailable(
                    "WeChat did not answer in time and the code can no longer be used; call wx.login() again",
                    retry_after=1,
                )
            return _checked(result)
        raise Unavailable(f"WeChat is not answering ({last_reason or 'out of time'}); try again", retry_after=1)

    async def _call_once(self, params: dict[str, str], timeout: float) -> Session:
        try:
            async with self._session.get(
                self._url, params=params, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:
            raise _Retryable("timeout", ambiguous=True) from None
        except aiohttp.ClientConnectionError as exc:
            # Refused before sending cannot have used the code; anything later might have.
            sent = not isinstance(exc, aiohttp.ClientConnectorError)
            raise _Retryable(f"connection: {type(exc).__name__}", ambiguous=sent) from None
        if status >= 500:
            raise _Retryable(f"HTTP {status}", ambiguous=False)
        if status != 200:
            raise UpstreamError(f"WeChat answered HTTP {status}")
        try:
            result = _session_decoder.decode(body)
        except msgspec.DecodeError:
            raise UpstreamError("WeChat answered with something that is not its JSON") from None
        if result.errcode == -1:
            raise _Retryable("errcode -1 (system busy)", ambiguous=False)
        return result


def _checked(result: Session) -> Session:
    code, msg = result.errcode, result.errmsg
    if code == 0:
        if not result.openid and not result.unionid:
            raise MinidoorError("the wechat mini program session is invalid", error="invalid_request", status=400)
        if not result.session_key:
            raise UpstreamError("WeChat answered without a session_key")
        return result
    detail = f"WeChat {code}: {msg}"
    if code == 40029:
        raise InvalidGrant(f"the code is invalid or expired ({detail}); call wx.login() again")
    if code == 40163:
        raise InvalidGrant(f"the code was already used ({detail}); call wx.login() again")
    if code == 40226:
        raise Forbidden(f"WeChat blocked this user's login as high-risk ({detail})")
    if code == 45011:
        raise RateLimited(f"this user logs in too often ({detail}); wait a minute", retry_after=60)
    if code in _CONFIG_ERRORS:
        raise UpstreamError(f"WeChat refused the application's mini-program credentials ({detail})")
    raise UpstreamError(f"WeChat refused the login ({detail})")
