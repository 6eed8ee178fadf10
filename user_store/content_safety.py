"""Content safety, the user store's half: avatars waiting for WeChat's verdict, and the message push that brings it.

An application with ``content_safety`` (``make set-content-safety``) has its users' display names and avatars
screened by WeChat's content security before anyone else sees them. The auth workers make the calls
(``auth_worker/content_safety.py``); this module keeps what waits for an answer:

- An uploaded avatar goes into ``avatar_reviews``, not ``avatars``: it is served at its unguessable URL (WeChat
  downloads it from there) but the user's ``avatar`` is unchanged. The gateway has a worker submit it to
  ``wxa/media_check_async`` and records WeChat's ``trace_id`` here (``record_trace``); a failed submission drops it
  (``discard``).
- WeChat pushes the verdict to ``/api/wechat-push/{appid}`` (plain-text mode, JSON), which the gateway hands over
  (``handle_push``). The request is WeChat's when its ``signature`` is sha1 of the sorted Token, ``timestamp`` and
  ``nonce``, and its timestamp is within ``PUSH_MAX_SKEW``. The Token is derived from the mini program's AppSecret
  (``push_token``), so nothing new is stored: ``make set-content-safety`` prints it for WeChat's console.
- ``pass`` makes the avatar the user's; ``risky`` and ``review`` (WeChat unsure) drop it. A verdict that comes before
  its trace_id was recorded waits in ``content_verdicts``.
- No verdict within ``AVATAR_REVIEW_TIMEOUT``: ``hold`` drops the avatar, ``show`` shows it; a risky verdict that
  comes later still takes it back, restoring the avatar the user had (``sweep``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal

import asyncpg
import msgspec
import structlog

from shared.config import ConfigError
from shared.errors import BadRequest, Forbidden, NotFound, Unavailable
from shared.messages import PASS, VERDICTS, ContentSubject, ContentSubjectResult, WechatPush
from user_store.audit import AuditWriter
from user_store.db import Conn, Pool, connection, transaction
from user_store.master_key import MasterKey
from user_store.provider_secrets import open_secret
from user_store.queries import content_safety as queries
from user_store.queries.applications import provider_by_appid

log = structlog.get_logger()

#: A pushed request's timestamp may be this far from our clock (seconds): an old signed URL replays no further.
PUSH_MAX_SKEW = 300
#: Reviews of shown avatars and early verdicts are kept this long for a verdict that comes late.
KEEP_LATE_FOR = 86400.0
_PUSH_TOKEN_PURPOSE = b"minidoor wechat message-push token v1"
Policy = Literal["hold", "show"]
NOT_SIGNED = "the request is not signed by WeChat's message push for this mini program"


class MediaEvent(msgspec.Struct, frozen=True):
    """The part of a ``wxa_media_check`` push minidoor reads."""

    class Result(msgspec.Struct, frozen=True):
        suggest: str = ""
        label: int = 0

    Event: str = ""
    appid: str = ""
    trace_id: str = ""
    errcode: int = 0
    result: Result = Result()


_event_decoder = msgspec.json.Decoder(MediaEvent)


def push_token(app_secret: str) -> str:
    """The Token the mini program's message push is configured with in WeChat's console: 32 letters and digits
    derived from its AppSecret (WeChat allows 3 to 32)."""
    return hmac.new(app_secret.encode(), _PUSH_TOKEN_PURPOSE, hashlib.sha256).hexdigest()[:32]


def push_signature(token: str, timestamp: str, nonce: str) -> str:
    """WeChat's message-push signature: sha1 of the three strings sorted and joined."""
    return hashlib.sha1("".join(sorted((token, timestamp, nonce))).encode()).hexdigest()


async def subject(pool: Pool, req: ContentSubject) -> ContentSubjectResult:
    """The openid WeChat's content security is asked about for what ``req.user_id`` submits."""
    async with connection(pool) as conn:
        row = await queries.subject(conn, req.client_id, req.user_id)
    if row is None:
        raise NotFound("the application has no WeChat mini program")
    if row["openid"] is None:
        raise BadRequest(
            "content safety needs the account's WeChat identity in this mini program; sign in with WeChat first"
        )
    return ContentSubjectResult(appid=row["appid"], openid=row["openid"])


async def record_trace(pool: Pool, review_id: str, trace_id: str, audit: AuditWriter | None) -> None:
    """The avatar's check was submitted as ``trace_id``; a verdict pushed before now is applied at once."""
    async with transaction(pool) as conn:
        await queries.lock_trace(conn, trace_id)  # against a push of this verdict committing meanwhile
        review = await queries.set_trace(conn, review_id, trace_id)
        if review is None:
            return  # superseded by a newer upload, or dropped by the sweep meanwhile
        early = await queries.take_verdict(conn, trace_id)
        if early is not None:
            await _decide(conn, review, early["suggest"], early["label"], audit)


async def discard(pool: Pool, review_id: str) -> None:
    async with connection(pool) as conn:
        await queries.delete_review(conn, review_id)


async def handle_push(pool: Pool, master: MasterKey | None, push: WechatPush, audit: AuditWriter | None) -> str:
    """WeChat's message push for ``push.appid``: the URL check's ``echostr``, or "success" for an event (its
    verdict applied). A request that is not WeChat's gets 403, naming no reason an attacker could use."""
    fresh = push.timestamp.isdigit() and abs(time.time() - int(push.timestamp)) <= PUSH_MAX_SKEW
    if not fresh or len(push.signature) != 40:
        raise Forbidden(NOT_SIGNED)  # before any lookup: an unsigned request costs no database work
    async with connection(pool) as conn:
        row = await provider_by_appid(conn, push.appid)
    if row is None:
        raise Forbidden(NOT_SIGNED)  # as a bad signature: which AppIDs exist is nobody's business
    try:
        secret = open_secret(master, row["id"], row["name"], row["app_secret"], row["app_secret_sealed"])
    except ConfigError as exc:
        log.error("provider_secret_unreadable", provider=row["name"], error=exc.description)
        raise Unavailable("the mini program's secret is unreadable on this server", retry_after=30) from None
    expected = push_signature(push_token(secret), push.timestamp, push.nonce)
    if not hmac.compare_digest(expected, push.signature):
        raise Forbidden(NOT_SIGNED)
    if push.method == "GET":
        return push.echostr
    try:
        event = _event_decoder.decode(push.body)
    except msgspec.DecodeError:
        raise BadRequest("the message push body is not WeChat's JSON (set the data format to JSON)") from None
    structlog.contextvars.bind_contextvars(wechat_event=event.Event[:32])
    if event.Event != "wxa_media_check" or not event.trace_id or len(event.trace_id) > 128:
        return "success"  # another event this mini program subscribed to: not ours to act on
    if event.appid and event.appid != push.appid:
        raise Forbidden(NOT_SIGNED)
    if event.errcode != 0:
        log.warning("media_check_failed", errcode=event.errcode)
        return "success"  # no verdict: the timeout policy decides
    suggest = event.result.suggest if event.result.suggest in VERDICTS else "review"
    label = max(-(2**31), min(event.result.label, 2**31 - 1))
    async with transaction(pool) as conn:
        await queries.lock_trace(conn, event.trace_id)
        review = await queries.review_by_trace(conn, event.trace_id, push.appid)
        if review is None:
            await queries.save_verdict(conn, event.trace_id, suggest, label)
        else:
            await _decide(conn, review, suggest, label, audit)
    return "success"


async def _decide(conn: Conn, review: asyncpg.Record, suggest: str, label: int, audit: AuditWriter | None) -> None:
    """Apply WeChat's verdict on the reviewed avatar, in the caller's transaction."""
    passed = suggest == PASS
    if passed and not review["shown"]:
        await queries.show_review(conn, review)
    elif not passed:
        if review["shown"]:
            await queries.revert_shown(conn, review)
        await queries.forget_as_previous(conn, review["id"])  # no later revert brings it back
    await queries.delete_review(conn, review["id"])
    structlog.contextvars.bind_contextvars(avatar_verdict=suggest, avatar_label=label)
    _audit(audit, "content_safety.avatar_passed" if passed else "content_safety.avatar_refused", review, label=label)


async def sweep(conn: Conn, limit: int, *, timeout: float, policy: Policy, audit: AuditWriter | None) -> int:
    """Settle pending avatars that waited ``timeout`` seconds for a verdict, per ``policy``; forget what no verdict
    can reach any more. Returns how many rows it settled (``pruning.prune_forever``'s batch contract)."""
    async with conn.transaction():
        due = await queries.due_reviews(conn, timeout, limit)
        for review in due:
            if policy == "show":
                await queries.show_unchecked(conn, review)
                _audit(audit, "content_safety.avatar_shown_unchecked", review)
            else:
                await queries.delete_review(conn, review["id"])
                _audit(audit, "content_safety.avatar_unchecked", review)
        if len(due) < limit:
            await queries.prune_stale(conn, KEEP_LATE_FOR)
    return len(due)


def _audit(audit: AuditWriter | None, action: str, review: asyncpg.Record, *, label: int = 0) -> None:
    if audit is None:
        return
    audit.record(
        action,
        actor_kind="system",
        actor_id="content_safety",
        target_user_id=str(review["user_id"]),
        client_id=review["client_id"],
        details={"review_id": review["id"], "label": label},
    )
