"""``/internal/content-safety/subject`` (a worker asks whose openid to check), ``/internal/avatar-reviews/*`` (the
gateway records a submitted check, or drops an avatar it could not submit) and ``/internal/wechat-push`` (WeChat's
message push, as the gateway received it): ``user_store/content_safety.py``."""

from __future__ import annotations

import msgspec
from aiohttp import web

from shared.errors import BadRequest
from shared.messages import AvatarReviewUpdate, ContentSubject, WechatPush, WechatPushAnswer
from user_store import content_safety
from user_store.appkeys import AUDIT, MASTER_KEY, PG_POOL
from user_store.avatars import AVATAR_ID
from user_store.http import json_response, read_json

_subject_decoder = msgspec.json.Decoder(ContentSubject)
_review_decoder = msgspec.json.Decoder(AvatarReviewUpdate)
_push_decoder = msgspec.json.Decoder(WechatPush)
_OK = {"ok": True}


async def subject(request: web.Request) -> web.Response:
    body = await read_json(request, _subject_decoder)
    return json_response(await content_safety.subject(request.app[PG_POOL], body))


async def _review(request: web.Request) -> AvatarReviewUpdate:
    body = await read_json(request, _review_decoder)
    if not AVATAR_ID.match(body.review_id) or len(body.trace_id) > 128:
        raise BadRequest("review_id or trace_id is malformed")
    return body


async def record_trace(request: web.Request) -> web.Response:
    body = await _review(request)
    if not body.trace_id:
        raise BadRequest("trace_id is missing")
    await content_safety.record_trace(request.app[PG_POOL], body.review_id, body.trace_id, request.app[AUDIT])
    return json_response(_OK)


async def discard(request: web.Request) -> web.Response:
    body = await _review(request)
    await content_safety.discard(request.app[PG_POOL], body.review_id)
    return json_response(_OK)


async def wechat_push(request: web.Request) -> web.Response:
    body = await read_json(request, _push_decoder)
    app = request.app
    text = await content_safety.handle_push(app[PG_POOL], app[MASTER_KEY], body, app[AUDIT])
    return json_response(WechatPushAnswer(text=text))
