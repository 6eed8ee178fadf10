"""WeChat's content security, the worker's half: ``wxa/msg_sec_check`` (version 2) for display names and
``wxa/media_check_async`` (version 2) for avatars, with the AppID's cluster-wide access token (``access_token.py``).

``ContentChecks.handle`` answers a ``ContentCheckJob`` from the gateway (update-user, upload-avatar); ``check_name``
screens the nickname a login carries. msg_sec_check's verdict comes back at once; media_check_async answers with a
``trace_id`` and WeChat pushes the verdict later (``user_store/content_safety.py``). WeChat wants the openid of the
user submitting the content (one who used the mini program in the last two hours), so the user store says whose it
is. Neither the text nor the openid reaches a log line: only verdicts, labels and errcodes do.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec
import structlog

from auth_worker.access_token import TOKEN_ERRCODES, AccessTokens, TokenRejected
from shared.errors import BadRequest, MinidoorError, Unavailable, UpstreamError
from shared.messages import (
    PASS,
    ContentChecked,
    ContentCheckJob,
    ContentSubject,
    LoginFailed,
    MiniProgramProvider,
    Reply,
)
from shared.user_store_client import UserStoreClient

#: WeChat's scene for profile data (资料).
SCENE_PROFILE = 1
#: WeChat's media type for an image.
MEDIA_IMAGE = 2


class _Result(msgspec.Struct, frozen=True):
    suggest: str = ""
    label: int = 0


class _Answer(msgspec.Struct, frozen=True):
    errcode: int = 0
    errmsg: str = ""
    result: _Result | None = None
    trace_id: str = ""


_decoder = msgspec.json.Decoder(_Answer)


class Verdict(msgspec.Struct, frozen=True):
    suggest: str
    label: int = 0


class ContentSafetyClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, tokens: AccessTokens, *, timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._timeout = timeout

    async def check_text(self, provider: MiniProgramProvider, openid: str, text: str) -> Verdict:
        body = {"content": text, "version": 2, "scene": SCENE_PROFILE, "openid": openid}
        answer = await self._call(provider, "/wxa/msg_sec_check", body)
        if answer.result is None or not answer.result.suggest:
            raise UpstreamError("WeChat's msg_sec_check answered without a verdict")
        return Verdict(answer.result.suggest, answer.result.label)

    async def check_media(self, provider: MiniProgramProvider, openid: str, media_url: str) -> str:
        """Submit an image; its ``trace_id`` (the verdict is pushed later)."""
        body = {
            "media_url": media_url,
            "media_type": MEDIA_IMAGE,
            "version": 2,
            "scene": SCENE_PROFILE,
            "openid": openid,
        }
        answer = await self._call(provider, "/wxa/media_check_async", body)
        if not answer.trace_id:
            raise UpstreamError("WeChat's media_check_async answered without a trace_id")
        return answer.trace_id

    async def _call(self, provider: MiniProgramProvider, path: str, body: dict[str, object]) -> _Answer:
        try:
            answer = await self._tokens.call(
                provider.appid, provider.secret, lambda token: self._post(path, token, body)
            )
        except TokenRejected as exc:
            raise Unavailable(
                "WeChat rejected its own new access token ({errcode}); try again", retry_after=1, errcode=exc.errcode
            ) from None
        if answer.errcode:
            structlog.contextvars.bind_contextvars(wechat_errcode=answer.errcode)
            detail = f"WeChat {answer.errcode}: {answer.errmsg}"
            if answer.errcode == -1:
                raise Unavailable(
                    "WeChat's content security is busy ({detail}); try again", retry_after=1, detail=detail
                )
            raise UpstreamError("WeChat's content security refused the check ({detail})", detail=detail)
        return answer

    async def _post(self, path: str, token: str, body: dict[str, object]) -> _Answer:
        try:
            async with self._session.post(
                self._base + path,
                params={"access_token": token},
                json=body,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable(
                "WeChat's content security did not answer ({reason}); try again",
                retry_after=1,
                reason=type(exc).__name__,
            ) from None
        if status != 200:
            raise Unavailable(
                "WeChat's content security answered HTTP {status}; try again", retry_after=1, status=status
            )
        try:
            answer = _decoder.decode(raw)
        except msgspec.DecodeError:
            raise UpstreamError("WeChat answered with something that is not its JSON") from None
        if answer.errcode in TOKEN_ERRCODES:
            raise TokenRejected(answer.errcode)
        return answer


class ContentChecks:
    """Answers ``ContentCheckJob``s, and screens a login's nickname."""

    def __init__(self, client: ContentSafetyClient, user_store: UserStoreClient) -> None:
        self._client = client
        self._user_store = user_store

    async def handle(self, job: ContentCheckJob, provider: MiniProgramProvider) -> Reply:
        try:
            if not provider.content_safety:
                return ContentChecked(job_id=job.job_id, verdict=PASS)
            subject = await self._user_store.content_subject(
                ContentSubject(client_id=job.client_id, user_id=job.user_id), request_id=job.request_id
            )
            if time.time() > job.deadline:
                raise Unavailable("the content check ran out of time; try again", retry_after=1)
            if job.kind == "name":
                verdict = await self._client.check_text(provider, subject.openid, job.text)
                structlog.contextvars.bind_contextvars(content_verdict=verdict.suggest, content_label=verdict.label)
                return ContentChecked(job_id=job.job_id, verdict=verdict.suggest, label=verdict.label)
            if job.kind == "avatar":
                trace_id = await self._client.check_media(provider, subject.openid, job.media_url)
                structlog.contextvars.bind_contextvars(content_verdict="submitted")
                return ContentChecked(job_id=job.job_id, verdict="submitted", trace_id=trace_id)
            raise BadRequest("unknown content kind {kind!r}", kind=job.kind[:32])
        except MinidoorError as exc:
            return LoginFailed.of(job.job_id, exc)

    async def check_name(self, provider: MiniProgramProvider, openid: str, name: str) -> bool:
        """Whether a login's nickname may become the new user's display name: only a pass does (a failed check
        drops the name, never the login)."""
        if not provider.content_safety or not name:
            return True
        try:
            verdict = await self._client.check_text(provider, openid, name)
        except MinidoorError as exc:
            structlog.contextvars.bind_contextvars(display_name_dropped="check_failed", content_error=exc.error)
            return False
        if verdict.suggest != PASS:
            structlog.contextvars.bind_contextvars(display_name_dropped=verdict.suggest, content_label=verdict.label)
            return False
        return True
