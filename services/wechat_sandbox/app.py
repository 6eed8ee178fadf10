"""A stand-in for api.weixin.qq.com: ``jscode2session``, ``cgi-bin/stable_token``,
``wxa/business/getuserphonenumber`` and content security (``wxa/msg_sec_check`` and ``wxa/media_check_async``,
version 2, whose verdict comes by message push) on WeChat's wire, plus ``/sandbox/*`` controls for tests.

The auth worker knows only a base URL, so it cannot tell this server from WeChat. Tests drive it through
``POST /sandbox/login`` (the part of ``wx.login()`` that mints a code), ``POST /sandbox/phone-code`` (what the
``getPhoneNumber`` button hands the mini program), queue failures with ``/sandbox/faults`` (or have an access token
rejected with 40001), move its clock with ``POST /sandbox/clock``, and read ``/sandbox/codes/{code}`` and
``/sandbox/stats`` to prove that no code was exchanged twice and how often a token was fetched.

Content security (``sec_check.py``): msg_sec_check judges the text at once (``sandbox-risky`` in it is risky,
``sandbox-review`` review, anything else pass). media_check_async answers a ``trace_id``, then downloads the media and
pushes the verdict to the URL ``POST /sandbox/push-config`` gave the AppID (its message push, signed with the Token);
``POST /sandbox/media-verdicts`` queues the verdicts and their delays (default: pass after 50 ms).

Access tokens follow reference §2b (stable_token): normal mode answers the same token while more than
``ROTATE_BEFORE`` seconds remain, then a new one, the old one staying valid until its own expiry (the 5-minute
overlap); ``force_refresh`` invalidates every earlier token, at most once per ``FORCE_REFRESH_EVERY`` seconds
(sooner, nothing is refreshed and the current token is answered).

All state lives in one ``SandboxState`` per app. Its methods never await, so every check-then-set on a code is
atomic on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import structlog
from aiohttp import web

from services.wechat_sandbox.sec_check import (
    ContentSecurity,
    MediaVerdictRequest,
    PushConfigRequest,
    Refused,
    Verdict,
    check_media,
    check_text,
)
from shared.config import ConfigError, SandboxConfig
from shared.errors import MinidoorError
from shared.guard import harden, input_guard

log = structlog.get_logger("wechat_sandbox")

#: WeChat's per-user quota window for jscode2session.
RATE_WINDOW = 60.0
#: stable_token hands out the next token once the current one has less than this left (both stay valid meanwhile).
ROTATE_BEFORE = 300.0
#: force_refresh calls closer together than this refresh nothing.
FORCE_REFRESH_EVERY = 30.0

ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40029: "invalid code",
    40125: "invalid appsecret",
    40163: "code been used",
    40226: "code blocked",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    42001: "access_token expired",
    43002: "require POST method",
    45011: "api minute-quota reach limit mustslower retry next minute",
    47001: "data format error",
}


class WeChatError(Exception):
    """A WeChat-style ``{errcode, errmsg}`` answer; ``status`` is 200 on the WeChat wire, 4xx on the controls."""

    def __init__(self, errcode: int, errmsg: str | None = None, *, status: int = 200) -> None:
        self.errcode = errcode
        self.errmsg = errmsg if errmsg is not None else ERRMSG.get(errcode, "system error")
        self.status = status
        super().__init__(errcode, self.errmsg)


# Control bodies reject unknown fields so that a typo in a test ("status" for "http_status") fails loudly.
class LoginRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    appid: str
    openid: str | None = None
    unionid: str | None = None


class AppRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    appid: Annotated[str, msgspec.Meta(min_length=1)]
    secret: Annotated[str, msgspec.Meta(min_length=1)]


class PhoneCodeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    appid: str
    phone_number: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4,20}$")]
    country_code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,4}$")] = "86"


class ClockRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    advance: Annotated[float, msgspec.Meta(ge=0, le=10_000_000)]


#: WeChat APIs a queued fault can hit.
FaultApi = Literal["jscode2session", "getuserphonenumber", "msg_sec_check", "media_check_async"]
#: ``revoke``: the app's current access token answers 40001 and stable_token hands out a new one (as after a leak
#: was force-refreshed elsewhere). ``stale``: the token answers 40001 yet normal-mode stable_token keeps handing it
#: out, until a force_refresh.
TokenFault = Literal["revoke", "stale"]


class FaultRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    errcode: int | None = None
    errmsg: str | None = None
    http_status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 0
    api: FaultApi = "jscode2session"
    #: With ``appid``: reject that app's current access token instead of queueing a fault.
    access_token: TokenFault | None = None
    appid: str | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """What one faulted call does: wait ``latency_ms``, then answer ``http_status`` or ``errcode`` if set.

    A latency-only fault lets the call proceed normally afterwards (and so consume the code), like a reply that
    reaches a client after it has given up.
    """

    latency_ms: int = 0
    errcode: int | None = None
    errmsg: str | None = None
    http_status: int | None = None

    @classmethod
    def from_request(cls, req: FaultRequest) -> Fault:
        if req.http_status is not None and (req.errcode is not None or req.errmsg is not None):
            raise WeChatError(47001, "data format error: http_status excludes errcode/errmsg", status=400)
        errcode = req.errcode
        if req.http_status is None and errcode is None and (req.errmsg is not None or req.latency_ms == 0):
            errcode = -1
        return cls(latency_ms=req.latency_ms, errcode=errcode, errmsg=req.errmsg, http_status=req.http_status)


@dataclass(slots=True)
class IssuedCode:
    code: str
    appid: str
    openid: str
    unionid: str | None
    issued_at: float
    presented: int = 0
    exchanged: int = 0
    #: The session_key its exchange handed out, so a test can look for it where it must not be (at rest, in logs).
    session_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "appid": self.appid,
            "openid": self.openid,
            "unionid": self.unionid,
            "presented": self.presented,
            "exchanged": self.exchanged,
        }


@dataclass(slots=True)
class _QueuedFault:
    fault: Fault
    remaining: int


@dataclass(slots=True)
class IssuedToken:
    value: str
    appid: str
    expires_at: float
    #: Answers 40001: invalidated by a force_refresh or a ``revoke`` fault, or ``stale`` (still handed out).
    rejected: bool = False


@dataclass(slots=True)
class AppTokens:
    current: IssuedToken | None = None
    last_force: float = float("-inf")


@dataclass(slots=True)
class PhoneCode:
    code: str
    appid: str
    phone_number: str
    country_code: str
    issued_at: float
    exchanged: int = 0


def new_access_token() -> str:
    """About 136 characters, like WeChat's (which asks for 512 of storage)."""
    return secrets.token_urlsafe(102)


def new_openid() -> str:
    """28 characters starting with "o", like WeChat's."""
    return "o" + secrets.token_urlsafe(20)


def new_code() -> str:
    """32 URL-safe characters, like a ``wx.login()`` code."""
    return secrets.token_urlsafe(24)


def new_rid() -> str:
    return "-".join(secrets.token_hex(4) for _ in range(3))


def parse_apps(spec: str) -> dict[str, str]:
    """``"appid:secret,appid2:secret2"`` -> ``{appid: secret}``; raise ``ConfigError`` on a malformed entry."""
    apps: dict[str, str] = {}
    for entry in spec.split(","):
        if not entry.strip():
            continue
        appid, sep, secret = entry.strip().partition(":")
        if not sep or not appid or not secret:
            raise ConfigError("invalid configuration: SANDBOX_APPS entries must look like appid:secret")
        apps[appid] = secret
    return apps


class SandboxState:
    """Apps, issued codes, per-user quotas, queued faults and counters of one sandbox."""

    def __init__(self, config: SandboxConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.code_ttl = config.sandbox_code_ttl
        self.token_ttl = config.sandbox_token_ttl
        self.user_rate_limit = config.sandbox_user_rate_limit
        self.apps = parse_apps(config.sandbox_apps)
        self._base_clock = clock
        #: Seconds ``POST /sandbox/clock`` moved this sandbox's time forward.
        self.clock_offset = 0.0
        self._tokens: dict[str, IssuedToken] = {}
        self._app_tokens: dict[str, AppTokens] = {}
        self._phone_codes: dict[str, PhoneCode] = {}
        self._api_faults: dict[str, deque[_QueuedFault]] = {}
        self.stable_token_calls: dict[str, int] = {}
        self.getuserphonenumber_calls = 0
        self.phone_codes_issued = 0
        self.phone_codes_exchanged = 0
        # Insertion order is issue order, so the oldest codes and the least recently active users sit in front.
        self._codes: dict[str, IssuedCode] = {}
        self._calls: OrderedDict[str, deque[float]] = OrderedDict()
        self._faults: deque[_QueuedFault] = deque()
        self.jscode2session_calls = 0
        self.codes_issued = 0
        self.codes_exchanged = 0
        self.codes_presented_more_than_once = 0
        self.faults_served = 0
        self.content = ContentSecurity()

    def _clock(self) -> float:
        return self._base_clock() + self.clock_offset

    def advance_clock(self, seconds: float) -> float:
        self.clock_offset += seconds
        return self.clock_offset

    def register_app(self, appid: str, secret: str) -> None:
        self.apps[appid] = secret

    def issue_code(self, appid: str, openid: str | None = None, unionid: str | None = None) -> IssuedCode:
        if appid not in self.apps:
            raise WeChatError(40013, status=400)
        now = self._clock()
        self._purge_codes(now)
        issued = IssuedCode(code=new_code(), appid=appid, openid=openid or new_openid(), unionid=unionid, issued_at=now)
        self._codes[issued.code] = issued
        self.codes_issued += 1
        return issued

    def get_code(self, code: str) -> IssuedCode | None:
        return self._codes.get(code)

    def begin_call(self, js_code: str) -> Fault | None:
        """Count a jscode2session call and the code it carries; return the fault it must suffer, if any."""
        self.jscode2session_calls += 1
        issued = self._codes.get(js_code)
        if issued is not None:
            issued.presented += 1
            if issued.presented == 2:
                self.codes_presented_more_than_once += 1
        if not self._faults:
            return None
        head = self._faults[0]
        head.remaining -= 1
        if head.remaining == 0:
            self._faults.popleft()
        self.faults_served += 1
        return head.fault

    def exchange(self, *, appid: str, secret: str, js_code: str, grant_type: str) -> dict[str, str]:
        """jscode2session's checks, in WeChat's order; the code is spent only when the answer is a success."""
        if not appid:
            raise WeChatError(41002)
        if not secret:
            raise WeChatError(41004)
        if not js_code:
            raise WeChatError(41008)
        if grant_type != "authorization_code":
            raise WeChatError(40002)
        if appid not in self.apps:
            raise WeChatError(40013)
        if not secrets.compare_digest(secret.encode(), self.apps[appid].encode()):
            raise WeChatError(40125)
        now = self._clock()
        issued = self._codes.get(js_code)
        if issued is None or issued.appid != appid or now - issued.issued_at > self.code_ttl:
            raise WeChatError(40029)
        if issued.exchanged:
            raise WeChatError(40163)
        self._take_quota(issued.openid, now)
        issued.exchanged = 1
        self.codes_exchanged += 1
        issued.session_key = base64.b64encode(secrets.token_bytes(16)).decode()
        body = {"openid": issued.openid, "session_key": issued.session_key}
        if issued.unionid:
            body["unionid"] = issued.unionid
        return body

    def stable_token(self, body: dict[str, Any]) -> dict[str, Any]:
        """stable_token's checks and answer (reference §2b); counts every call that names an appid."""
        appid, secret = body.get("appid"), body.get("secret")
        if isinstance(appid, str) and appid:
            self.stable_token_calls[appid] = self.stable_token_calls.get(appid, 0) + 1
        if body.get("grant_type") != "client_credential":
            raise WeChatError(40002)
        if not isinstance(appid, str) or not appid:
            raise WeChatError(41002)
        if not isinstance(secret, str) or not secret:
            raise WeChatError(41004)
        if appid not in self.apps:
            raise WeChatError(40013)
        if not secrets.compare_digest(secret.encode(), self.apps[appid].encode()):
            raise WeChatError(40125)
        force = body.get("force_refresh", False)
        if not isinstance(force, bool):
            raise WeChatError(47001)
        now = self._clock()
        app = self._app_tokens.setdefault(appid, AppTokens())
        current = app.current
        if force and now - app.last_force >= FORCE_REFRESH_EVERY:
            app.last_force = now
            for token in self._tokens.values():
                if token.appid == appid:
                    token.rejected = True
            current = None
        elif current is not None and (current.expires_at - now <= ROTATE_BEFORE or now >= current.expires_at):
            current = None  # the next token; the old one lives out its last minutes
        if current is None:
            self._purge_tokens(now)
            current = IssuedToken(new_access_token(), appid, now + self.token_ttl)
            self._tokens[current.value] = current
            app.current = current
        return {"access_token": current.value, "expires_in": max(0, int(current.expires_at - now))}

    def check_token(self, access_token: str) -> str:
        """The appid an access token is valid for, or 40014 (never issued), 42001 (expired), 40001 (invalidated)."""
        token = self._tokens.get(access_token)
        if token is None:
            raise WeChatError(40014)
        if token.rejected:
            raise WeChatError(40001)
        if self._clock() >= token.expires_at:
            raise WeChatError(42001)
        return token.appid

    def reject_token(self, appid: str, how: TokenFault) -> int:
        """Reject ``appid``'s current access token with 40001 (see ``TokenFault``); how many tokens that touched."""
        app = self._app_tokens.get(appid)
        if app is None or app.current is None:
            return 0
        app.current.rejected = True
        if how == "revoke":
            app.current = None
        return 1

    def issue_phone_code(self, appid: str, phone_number: str, country_code: str) -> PhoneCode:
        if appid not in self.apps:
            raise WeChatError(40013, status=400)
        now = self._clock()
        horizon = now - 2 * self.code_ttl
        while self._phone_codes:
            oldest = next(iter(self._phone_codes.values()))
            if oldest.issued_at >= horizon:
                break
            del self._phone_codes[oldest.code]
        issued = PhoneCode(new_code(), appid, phone_number, country_code, now)
        self._phone_codes[issued.code] = issued
        self.phone_codes_issued += 1
        return issued

    def get_phone_code(self, code: str) -> PhoneCode | None:
        return self._phone_codes.get(code)

    def phone_number(self, access_token: str, code: str) -> dict[str, Any]:
        """getuserphonenumber: the token first, then the code (single-use, ``code_ttl``, of the token's app)."""
        appid = self.check_token(access_token)
        if not code:
            raise WeChatError(41008)
        issued = self._phone_codes.get(code)
        if issued is None or self._clock() - issued.issued_at > self.code_ttl or issued.exchanged:
            raise WeChatError(40029)
        if issued.appid != appid:
            raise WeChatError(40013)
        issued.exchanged = 1
        self.phone_codes_exchanged += 1
        full = issued.phone_number if issued.country_code == "86" else f"+{issued.country_code}{issued.phone_number}"
        return {
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": full,
                "purePhoneNumber": issued.phone_number,
                "countryCode": int(issued.country_code),
                "watermark": {"timestamp": int(time.time()), "appid": appid},
            },
        }

    def begin_api_call(self, api: str) -> Fault | None:
        """A queued fault for ``api`` (other than jscode2session), if any."""
        if api == "getuserphonenumber":
            self.getuserphonenumber_calls += 1
        elif api == "msg_sec_check":
            self.content.msg_sec_check_calls += 1
        elif api == "media_check_async":
            self.content.media_check_calls += 1
        queue = self._api_faults.get(api)
        if not queue:
            return None
        head = queue[0]
        head.remaining -= 1
        if head.remaining == 0:
            queue.popleft()
        self.faults_served += 1
        return head.fault

    def queue_fault(self, fault: Fault, count: int, api: FaultApi = "jscode2session") -> int:
        queue = self._faults if api == "jscode2session" else self._api_faults.setdefault(api, deque())
        queue.append(_QueuedFault(fault, count))
        return self.pending_faults

    def clear_faults(self) -> int:
        self._faults.clear()
        self._api_faults.clear()
        return 0

    @property
    def pending_faults(self) -> int:
        queues = [self._faults, *self._api_faults.values()]
        return sum(entry.remaining for queue in queues for entry in queue)

    def stats(self) -> dict[str, Any]:
        return {
            "jscode2session_calls": self.jscode2session_calls,
            "codes_issued": self.codes_issued,
            "codes_exchanged": self.codes_exchanged,
            "codes_presented_more_than_once": self.codes_presented_more_than_once,
            "faults_served": self.faults_served,
            "stable_token_calls": dict(self.stable_token_calls),
            "getuserphonenumber_calls": self.getuserphonenumber_calls,
            "phone_codes_issued": self.phone_codes_issued,
            "phone_codes_exchanged": self.phone_codes_exchanged,
            **self.content.stats(),
        }

    def _purge_tokens(self, now: float) -> None:
        """Forget tokens expired for a day (they answered 42001 meanwhile); insertion order is issue order."""
        horizon = now - 86400
        while self._tokens:
            oldest = next(iter(self._tokens.values()))
            if oldest.expires_at >= horizon:
                break
            del self._tokens[oldest.value]

    def _take_quota(self, openid: str, now: float) -> None:
        """Admit one call for ``openid`` or raise 45011; refused calls do not use up the quota."""
        horizon = now - RATE_WINDOW
        window = self._calls.setdefault(openid, deque())
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= self.user_rate_limit:
            raise WeChatError(45011)
        window.append(now)
        self._calls.move_to_end(openid)
        while self._calls:
            oldest = next(iter(self._calls.values()))
            if oldest and oldest[-1] > horizon:
                break
            self._calls.popitem(last=False)

    def _purge_codes(self, now: float) -> None:
        horizon = now - 2 * self.code_ttl
        while self._codes:
            oldest = next(iter(self._codes.values()))
            if oldest.issued_at >= horizon:
                break
            del self._codes[oldest.code]


SANDBOX = web.AppKey("wechat_sandbox", SandboxState)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_T = TypeVar("_T")


def _errcode_json(exc: WeChatError, *, rid: bool) -> web.Response:
    errmsg = f"{exc.errmsg}, rid: {new_rid()}" if rid else exc.errmsg
    return web.json_response({"errcode": exc.errcode, "errmsg": errmsg}, status=exc.status)


async def _decode_body(request: web.Request, type_: type[_T]) -> _T:
    try:
        return msgspec.json.decode(await request.read(), type=type_)
    except msgspec.DecodeError as exc:
        raise WeChatError(47001, f"data format error: {exc}", status=400) from None


@web.middleware
async def _canonical_line(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """One log line per request; a WeChat-style JSON error instead of any traceback."""
    structlog.contextvars.clear_contextvars()
    started = time.perf_counter()
    try:
        response = await handler(request)
    except WeChatError as exc:
        structlog.contextvars.bind_contextvars(errcode=exc.errcode)
        response = _errcode_json(exc, rid=False)
    except MinidoorError as exc:
        # Refused by the input guard (not UTF-8, too deep, too large, too slow): a control-style 4xx.
        response = _errcode_json(WeChatError(40097, exc.description, status=exc.status), rid=False)
    except web.HTTPException as exc:
        _log_request(request, exc.status, started)
        raise
    except (RecursionError, UnicodeError):
        response = _errcode_json(WeChatError(40097, "the request could not be decoded", status=400), rid=False)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        response = _errcode_json(WeChatError(-1, status=500), rid=True)
    _log_request(request, response.status, started)
    return response


def _log_request(request: web.Request, status: int, started: float) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    log.info("request", method=request.method, path=request.path, status=status, duration_ms=duration_ms)


async def _jscode2session(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX]
    query = request.query
    appid = query.get("appid", "")
    structlog.contextvars.bind_contextvars(appid=appid)
    fault = state.begin_call(query.get("js_code", ""))
    if fault is not None:
        structlog.contextvars.bind_contextvars(fault=True)
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.http_status is not None:
            text = f"<html><body><h1>{fault.http_status}</h1>sandbox fault</body></html>"
            return web.Response(status=fault.http_status, text=text, content_type="text/html")
        if fault.errcode is not None:
            structlog.contextvars.bind_contextvars(errcode=fault.errcode)
            return _errcode_json(WeChatError(fault.errcode, fault.errmsg), rid=True)
    try:
        body = state.exchange(
            appid=appid,
            secret=query.get("secret", ""),
            js_code=query.get("js_code", ""),
            grant_type=query.get("grant_type", ""),
        )
    except WeChatError as exc:
        structlog.contextvars.bind_contextvars(errcode=exc.errcode)
        return _errcode_json(exc, rid=True)
    structlog.contextvars.bind_contextvars(errcode=0)
    return web.json_response(body)


async def _serve_fault(fault: Fault) -> web.StreamResponse | None:
    structlog.contextvars.bind_contextvars(fault=True)
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.http_status is not None:
        text = f"<html><body><h1>{fault.http_status}</h1>sandbox fault</body></html>"
        return web.Response(status=fault.http_status, text=text, content_type="text/html")
    if fault.errcode is not None:
        structlog.contextvars.bind_contextvars(errcode=fault.errcode)
        return _errcode_json(WeChatError(fault.errcode, fault.errmsg), rid=True)
    return None


async def _json_object(request: web.Request) -> dict[str, Any]:
    """WeChat's JSON body, or 47001 "data format error" (HTTP 200, as WeChat answers it)."""
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        raise WeChatError(47001) from None
    if not isinstance(body, dict):
        raise WeChatError(47001)
    return body


async def _stable_token(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX]
    try:
        if request.method != "POST":
            raise WeChatError(43002)
        body = await _json_object(request)
        structlog.contextvars.bind_contextvars(appid=str(body.get("appid", ""))[:32])
        answer = state.stable_token(body)
    except WeChatError as exc:
        structlog.contextvars.bind_contextvars(errcode=exc.errcode)
        return _errcode_json(exc, rid=True)
    structlog.contextvars.bind_contextvars(errcode=0)
    return web.json_response(answer)


async def _getuserphonenumber(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX]
    fault = state.begin_api_call("getuserphonenumber")
    if fault is not None and (response := await _serve_fault(fault)) is not None:
        return response
    try:
        body = await _json_object(request)
        code = body.get("code")
        answer = state.phone_number(request.query.get("access_token", ""), code if isinstance(code, str) else "")
    except WeChatError as exc:
        structlog.contextvars.bind_contextvars(errcode=exc.errcode)
        return _errcode_json(exc, rid=True)
    structlog.contextvars.bind_contextvars(errcode=0, appid=answer["phone_info"]["watermark"]["appid"])
    return web.json_response(answer)


async def _content_check(
    request: web.Request, api: FaultApi, answer: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> web.StreamResponse:
    """A content-security API: its queued fault, then the access token, the body, and ``answer(appid, body)``."""
    state = request.app[SANDBOX]
    fault = state.begin_api_call(api)
    if fault is not None and (response := await _serve_fault(fault)) is not None:
        return response
    try:
        appid = state.check_token(request.query.get("access_token", ""))
        structlog.contextvars.bind_contextvars(appid=appid)
        body = await _json_object(request)
        try:
            result = answer(appid, body)
        except Refused as exc:
            raise WeChatError(exc.errcode, exc.errmsg) from None
    except WeChatError as exc:
        structlog.contextvars.bind_contextvars(errcode=exc.errcode)
        return _errcode_json(exc, rid=True)
    structlog.contextvars.bind_contextvars(errcode=0)
    return web.json_response(result)


async def _msg_sec_check(request: web.Request) -> web.StreamResponse:
    return await _content_check(request, "msg_sec_check", lambda appid, body: check_text(body))


async def _media_check_async(request: web.Request) -> web.StreamResponse:
    content = request.app[SANDBOX].content

    def submit(appid: str, body: dict[str, Any]) -> dict[str, Any]:
        trace_id = content.submit(appid, check_media(body))
        return {"errcode": 0, "errmsg": "ok", "trace_id": trace_id}

    return await _content_check(request, "media_check_async", submit)


async def _push_config(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, PushConfigRequest)
    state = request.app[SANDBOX]
    if req.appid not in state.apps:
        raise WeChatError(40013, status=400)
    state.content.configure_push(req.appid, req.url, req.token)
    return web.json_response({"appid": req.appid})


async def _media_verdicts(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, MediaVerdictRequest)
    state = request.app[SANDBOX]
    if req.appid not in state.apps:
        raise WeChatError(40013, status=400)
    return web.json_response({"queued": state.content.queue_verdict(req.appid, Verdict.from_request(req), req.count)})


async def _phone_code(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, PhoneCodeRequest)
    structlog.contextvars.bind_contextvars(appid=req.appid)
    issued = request.app[SANDBOX].issue_phone_code(req.appid, req.phone_number, req.country_code)
    return web.json_response({"code": issued.code})


async def _get_phone_code(request: web.Request) -> web.StreamResponse:
    issued = request.app[SANDBOX].get_phone_code(request.match_info["code"])
    if issued is None:
        raise WeChatError(40029, status=404)
    return web.json_response({"code": issued.code, "appid": issued.appid, "exchanged": issued.exchanged})


async def _advance_clock(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, ClockRequest)
    return web.json_response({"offset": request.app[SANDBOX].advance_clock(req.advance)})


async def _login(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, LoginRequest)
    structlog.contextvars.bind_contextvars(appid=req.appid)
    issued = request.app[SANDBOX].issue_code(req.appid, req.openid, req.unionid)
    return web.json_response({"code": issued.code, "openid": issued.openid})


async def _register_app(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, AppRequest)
    request.app[SANDBOX].register_app(req.appid, req.secret)
    return web.json_response({"appid": req.appid})


async def _queue_fault(request: web.Request) -> web.StreamResponse:
    req = await _decode_body(request, FaultRequest)
    state = request.app[SANDBOX]
    if req.access_token is not None or req.appid is not None:
        if req.access_token is None or req.appid is None:
            raise WeChatError(47001, "data format error: access_token and appid go together", status=400)
        return web.json_response({"rejected": state.reject_token(req.appid, req.access_token)})
    queued = state.queue_fault(Fault.from_request(req), req.count, req.api)
    return web.json_response({"queued": queued})


async def _clear_faults(request: web.Request) -> web.StreamResponse:
    return web.json_response({"queued": request.app[SANDBOX].clear_faults()})


async def _get_code(request: web.Request) -> web.StreamResponse:
    issued = request.app[SANDBOX].get_code(request.match_info["code"])
    if issued is None:
        raise WeChatError(40029, status=404)
    return web.json_response(issued.to_dict())


async def _get_session_key(request: web.Request) -> web.StreamResponse:
    """The session_key a code's exchange handed out ("" before it), for tests that look for it at rest and in logs."""
    issued = request.app[SANDBOX].get_code(request.match_info["code"])
    if issued is None:
        raise WeChatError(40029, status=404)
    return web.json_response({"session_key": issued.session_key})


async def _stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[SANDBOX].stats())


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _content_security_ctx(app: web.Application) -> AsyncIterator[None]:
    """media_check_async's deliveries: their HTTP session, and every one in flight cancelled on cleanup."""
    async with app[SANDBOX].content.running():
        yield


def create_app(config: SandboxConfig) -> web.Application:
    """The sandbox app; raises ``ConfigError`` if ``SANDBOX_APPS`` is malformed. Does no I/O."""
    app = web.Application(middlewares=[_canonical_line, input_guard])
    harden(app)
    app[SANDBOX] = SandboxState(config)
    app.cleanup_ctx.append(_content_security_ctx)
    app.router.add_get("/sns/jscode2session", _jscode2session)
    app.router.add_route("*", "/cgi-bin/stable_token", _stable_token)
    app.router.add_post("/wxa/business/getuserphonenumber", _getuserphonenumber)
    app.router.add_post("/wxa/msg_sec_check", _msg_sec_check)
    app.router.add_post("/wxa/media_check_async", _media_check_async)
    app.router.add_post("/sandbox/login", _login)
    app.router.add_post("/sandbox/phone-code", _phone_code)
    app.router.add_get("/sandbox/phone-codes/{code}", _get_phone_code)
    app.router.add_post("/sandbox/clock", _advance_clock)
    app.router.add_post("/sandbox/apps", _register_app)
    app.router.add_post("/sandbox/faults", _queue_fault)
    app.router.add_post("/sandbox/push-config", _push_config)
    app.router.add_post("/sandbox/media-verdicts", _media_verdicts)
    app.router.add_delete("/sandbox/faults", _clear_faults)
    app.router.add_get("/sandbox/codes/{code}", _get_code)
    app.router.add_get("/sandbox/codes/{code}/session_key", _get_session_key)
    app.router.add_get("/sandbox/stats", _stats)
    app.router.add_get("/healthz", _healthz)
    return app
