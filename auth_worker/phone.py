"""WeChat's ``wxa/business/getuserphonenumber``: a ``getPhoneNumber`` button's code for the user's phone number, with
the AppID's cluster-wide access token (``access_token.py``, which retries once with a newer token on 40001/40014/
42001).

Like a login code, a phone code works once (reference §3a). It is presented again only after a failure that surely
left it unused (errcode -1, HTTP 5xx, a connection refused), raised as ``CodeUnspent``; a timeout is not retried.
The phone number never reaches a log line: only the errcode does.
"""

from __future__ import annotations

import aiohttp
import msgspec
import structlog

from auth_worker.access_token import TOKEN_ERRCODES, AccessTokens, TokenRejected
from auth_worker.wechat import CodeUnspent, WechatConfigError, WechatRateLimited
from shared.errors import InvalidGrant, Unavailable, UpstreamError

_PHONE_DIGITS = 20


class Watermark(msgspec.Struct, frozen=True):
    appid: str = ""
    timestamp: int = 0


class PhoneInfo(msgspec.Struct, frozen=True, rename="camel"):
    phone_number: str = ""
    pure_phone_number: str = ""
    #: The docs' table says string, their example a number: both are read.
    country_code: str | int = ""
    watermark: Watermark = Watermark()


class _Answer(msgspec.Struct, frozen=True):
    errcode: int = 0
    errmsg: str = ""
    phone_info: PhoneInfo | None = None


_decoder = msgspec.json.Decoder(_Answer)


class PhoneCodeUnspent(CodeUnspent, Unavailable):
    """WeChat was busy or unreachable before using the phone code: the same code may be presented again."""


class Phone(msgspec.Struct, frozen=True):
    """A phone number WeChat vouched for: digits without the country code, and the country code's digits."""

    number: str
    country_code: str


class PhoneClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, tokens: AccessTokens, *, timeout: float) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/wxa/business/getuserphonenumber"
        self._tokens = tokens
        self._timeout = timeout

    async def phone_number(self, appid: str, secret: str, code: str) -> Phone:
        """The number behind ``code``, its watermark checked against ``appid``."""
        try:
            answer = await self._tokens.call(appid, secret, lambda token: self._call(token, code))
        except TokenRejected as exc:  # the newer token too: the code was not looked at
            structlog.contextvars.bind_contextvars(wechat_errcode=exc.errcode)
            raise PhoneCodeUnspent(
                "WeChat rejected its own new access token ({errcode}); try again", retry_after=1, errcode=exc.errcode
            ) from None
        return _checked(answer, appid)

    async def _call(self, token: str, code: str) -> _Answer:
        try:
            async with self._session.post(
                self._url,
                params={"access_token": token},
                json={"code": code},
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            raise PhoneCodeUnspent(
                "WeChat is unreachable ({reason}); try again", retry_after=1, reason=type(exc).__name__
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable(
                "WeChat did not answer ({reason}) and may have used the phone code; tap the button again",
                retry_after=1,
                reason=type(exc).__name__,
            ) from None
        if status >= 500:
            raise PhoneCodeUnspent("WeChat answered HTTP {status}; try again", retry_after=1, status=status)
        if status != 200:
            raise UpstreamError("WeChat answered HTTP {status}", status=status)
        try:
            answer = _decoder.decode(raw)
        except msgspec.DecodeError:
            raise UpstreamError("WeChat answered with something that is not its JSON") from None
        if answer.errcode in TOKEN_ERRCODES:
            raise TokenRejected(answer.errcode)
        return answer


def _checked(answer: _Answer, appid: str) -> Phone:
    code = answer.errcode
    if code:
        structlog.contextvars.bind_contextvars(wechat_errcode=code)
    detail = f"WeChat {code}: {answer.errmsg}"
    if code == -1:
        raise PhoneCodeUnspent("WeChat is busy ({detail}); try again", retry_after=1, detail=detail)
    if code == 40029:
        raise InvalidGrant("the phone code is invalid, expired or used ({detail}); tap the button again", detail=detail)
    if code == 40013:
        raise InvalidGrant("the phone code belongs to another mini program ({detail})", detail=detail)
    if code == 45011:
        raise WechatRateLimited(
            "too many phone-number requests ({detail}); wait a minute", retry_after=60, detail=detail
        )
    if code in (40125, 40164, 61004, 40243):
        raise WechatConfigError("WeChat refused the application's mini-program credentials ({detail})", detail=detail)
    if code:
        raise UpstreamError("WeChat refused the phone number ({detail})", detail=detail)
    info = answer.phone_info
    if info is None or not info.pure_phone_number:
        raise UpstreamError("WeChat answered without a phone number")
    if info.watermark.appid != appid:
        raise InvalidGrant("the phone number was issued for another mini program (its watermark names another AppID)")
    number, country = info.pure_phone_number, str(info.country_code)
    if not number.isdigit() or len(number) > _PHONE_DIGITS or not country.isdigit() or len(country) > 4:
        raise UpstreamError("WeChat answered a phone number that is not digits")
    return Phone(number=number, country_code=country)
