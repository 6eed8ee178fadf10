"""WeChat's content security in the sandbox: ``wxa/msg_sec_check`` and ``wxa/media_check_async`` (version 2), and the
message push that carries media_check_async's verdict back to the mini program's server.

``app.py`` owns the routes; this module holds what they need: the request checks (``Refused`` carries the errcode
WeChat answers), the verdicts, the push's signature, and ``ContentSecurity``, the per-app state with the background
deliveries. A delivery sleeps the verdict's delay, downloads the media as WeChat does, then pushes the verdict to
the AppID's message-push URL in plain-text mode with JSON data. Its tasks and HTTP session live only inside
``ContentSecurity.running()``, which the app enters as a cleanup context.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import aiohttp
import msgspec
import structlog

log = structlog.get_logger("wechat_sandbox")

#: Content longer than this (in characters) is refused with 47001, as WeChat does.
MAX_CONTENT = 2500
#: Seconds for the media download and for the push, each.
HTTP_TIMEOUT = 5.0
#: The verdict of a media check with no verdict queued for its AppID.
DEFAULT_DELAY_MS = 50
RISKY_MARK = "sandbox-risky"
REVIEW_MARK = "sandbox-review"
PROB = 90
DOWNLOAD_FAILED = -1008

Suggest = Literal["pass", "risky", "review"]


class Refused(Exception):
    """A check WeChat refuses with ``errcode`` (answered with HTTP 200, like every WeChat error)."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        self.errcode = errcode
        self.errmsg = errmsg
        super().__init__(errcode, errmsg)


def _format_error(what: str = "") -> Refused:
    return Refused(47001, f"data format error: {what}" if what else "data format error")


class PushConfigRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The message-push server configuration of a mini program, as set in WeChat's console."""

    appid: Annotated[str, msgspec.Meta(min_length=1)]
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    #: WeChat's console allows 3 to 32 letters and digits.
    token: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{3,32}$")]


class MediaVerdictRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The next ``count`` media checks of ``appid`` get this verdict; ``none`` is one WeChat never pushes."""

    appid: Annotated[str, msgspec.Meta(min_length=1)]
    suggest: Literal["pass", "risky", "review", "none"]
    label: int | None = None
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = DEFAULT_DELAY_MS
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    suggest: Suggest | Literal["none"]
    label: int
    delay_ms: int = DEFAULT_DELAY_MS

    @classmethod
    def from_request(cls, req: MediaVerdictRequest) -> Verdict:
        label = req.label if req.label is not None else (100 if req.suggest == "pass" else 20001)
        return cls(req.suggest, label, req.delay_ms)


DEFAULT_VERDICT = Verdict("pass", 100)


@dataclass(slots=True)
class _QueuedVerdict:
    verdict: Verdict
    remaining: int


@dataclass(frozen=True, slots=True)
class PushConfig:
    url: str
    token: str


@dataclass(frozen=True, slots=True)
class MediaCheck:
    appid: str
    trace_id: str
    media_url: str
    verdict: Verdict


def push_signature(token: str, timestamp: str, nonce: str) -> str:
    """WeChat's message-push signature: the hex sha1 of token, timestamp and nonce, sorted and joined."""
    return hashlib.sha1("".join(sorted((token, timestamp, nonce))).encode()).hexdigest()


def new_trace_id() -> str:
    """Three groups of 8 hex digits, like WeChat's trace_id."""
    return "-".join(secrets.token_hex(4) for _ in range(3))


def new_nonce() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(10))


def text_verdict(content: str) -> tuple[Suggest, int]:
    if RISKY_MARK in content:
        return "risky", 20001
    if REVIEW_MARK in content:
        return "review", 20002
    return "pass", 100


def _check_common(body: dict[str, Any]) -> None:
    """version, openid and scene, in WeChat's order."""
    version = body.get("version")
    if not ((type(version) is int and version == 2) or version == "2"):
        raise _format_error()
    openid = body.get("openid")
    if not isinstance(openid, str) or not openid:
        raise Refused(40003, "invalid openid")
    scene = body.get("scene")
    if type(scene) is not int or not 1 <= scene <= 4:
        raise _format_error()


def check_text(body: dict[str, Any]) -> dict[str, Any]:
    """msg_sec_check's answer for a decoded body, or ``Refused``."""
    _check_common(body)
    content = body.get("content")
    if content is None or content == "":
        raise Refused(44004, "empty content")
    if not isinstance(content, str) or len(content) > MAX_CONTENT:
        raise _format_error()
    for name in ("nickname", "title", "signature"):
        if not isinstance(body.get(name, ""), str):
            raise _format_error()
    suggest, label = text_verdict(content)
    return {
        "errcode": 0,
        "errmsg": "ok",
        "result": {"suggest": suggest, "label": label},
        "detail": [{"strategy": "content_model", "errcode": 0, "suggest": suggest, "label": label, "prob": PROB}],
        "trace_id": new_trace_id(),
    }


def check_media(body: dict[str, Any]) -> str:
    """media_check_async's media_url for a decoded body, or ``Refused``."""
    _check_common(body)
    media_url = body.get("media_url")
    if not isinstance(media_url, str) or not media_url.startswith(("http://", "https://")):
        raise _format_error()
    if type(body.get("media_type")) is not int or body["media_type"] not in (1, 2):
        raise _format_error()
    return media_url


def push_event(check: MediaCheck, *, downloaded: bool) -> dict[str, Any]:
    """The ``wxa_media_check`` event WeChat pushes for ``check``."""
    if downloaded:
        errcode, errmsg, suggest, label, prob = 0, "ok", check.verdict.suggest, check.verdict.label, PROB
    else:
        errcode, errmsg, suggest, label, prob = DOWNLOAD_FAILED, "media download failed", "review", 0, 0
    now = int(time.time())
    return {
        "ToUserName": "gh_sandbox",
        "FromUserName": "sandbox",
        "CreateTime": now,
        "MsgType": "event",
        "Event": "wxa_media_check",
        "appid": check.appid,
        "trace_id": check.trace_id,
        "version": 2,
        "detail": [{"strategy": "content_model", "errcode": errcode, "suggest": suggest, "label": label, "prob": prob}],
        "errcode": errcode,
        "errmsg": errmsg,
        "result": {"suggest": suggest, "label": label},
    }


@dataclass(slots=True)
class ContentSecurity:
    """Push configurations, queued media verdicts, counters and the deliveries in flight of one sandbox."""

    push_configs: dict[str, PushConfig] = field(default_factory=dict)
    msg_sec_check_calls: int = 0
    media_check_calls: int = 0
    #: Every push POSTed, answered well or not; ``media_pushes_failed`` counts those not answered 200 "success"/"".
    media_pushes_sent: int = 0
    media_pushes_failed: int = 0
    media_downloads_failed: int = 0
    _verdicts: dict[str, deque[_QueuedVerdict]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    def configure_push(self, appid: str, url: str, token: str) -> None:
        self.push_configs[appid] = PushConfig(url, token)

    def queue_verdict(self, appid: str, verdict: Verdict, count: int) -> int:
        """Queue ``count`` of ``verdict`` for ``appid``; how many verdicts that AppID now has pending."""
        queue = self._verdicts.setdefault(appid, deque())
        queue.append(_QueuedVerdict(verdict, count))
        return sum(entry.remaining for entry in queue)

    def next_verdict(self, appid: str) -> Verdict:
        queue = self._verdicts.get(appid)
        if not queue:
            return DEFAULT_VERDICT
        head = queue[0]
        head.remaining -= 1
        if head.remaining == 0:
            queue.popleft()
        return head.verdict

    def submit(self, appid: str, media_url: str) -> str:
        """Accept a media check: its trace_id; the verdict is delivered in the background."""
        check = MediaCheck(appid, new_trace_id(), media_url, self.next_verdict(appid))
        if check.verdict.suggest != "none":
            self._spawn(self._deliver(check))
        return check.trace_id

    def stats(self) -> dict[str, int]:
        return {
            "msg_sec_check_calls": self.msg_sec_check_calls,
            "media_check_calls": self.media_check_calls,
            "media_pushes_sent": self.media_pushes_sent,
            "media_pushes_failed": self.media_pushes_failed,
            "media_downloads_failed": self.media_downloads_failed,
        }

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The HTTP session deliveries use; on exit every delivery still in flight is cancelled and awaited."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as session:
            self._session = session
            try:
                yield
            finally:
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # A fresh context: the delivery must not log with the bindings of the request that submitted it.
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, check: MediaCheck) -> None:
        structlog.contextvars.bind_contextvars(appid=check.appid, trace_id=check.trace_id)
        try:
            await asyncio.sleep(check.verdict.delay_ms / 1000)
            downloaded = await self._download(check.media_url)
            if not downloaded:
                self.media_downloads_failed += 1
            config = self.push_configs.get(check.appid)
            if config is None:
                log.info("media_check_unpushed", reason="no push configured", downloaded=downloaded)
                return
            await self._push(config, push_event(check, downloaded=downloaded))
        except Exception:
            log.exception("media_check_delivery_failed")

    async def _download(self, url: str) -> bool:
        try:
            async with self._http().get(url) as resp:
                async for _ in resp.content.iter_chunked(65536):
                    pass
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _push(self, config: PushConfig, event: dict[str, Any]) -> None:
        timestamp, nonce = str(int(time.time())), new_nonce()
        params = {"signature": push_signature(config.token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
        self.media_pushes_sent += 1
        status, answer = 0, ""
        try:
            async with self._http().post(config.url, params=params, json=event) as resp:
                status, answer = resp.status, (await resp.text(errors="replace")).strip()
        except (TimeoutError, aiohttp.ClientError) as exc:
            answer = type(exc).__name__
        accepted = status == 200 and answer in ("success", "")
        if not accepted:
            self.media_pushes_failed += 1
        log.info("media_check_pushed", status=status, accepted=accepted, suggest=event["result"]["suggest"])

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ContentSecurity.running() is not entered")
        return self._session
