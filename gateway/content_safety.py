"""Content safety, the gateway's half: a bearer's new display name waits for WeChat's verdict before the update
reaches the user store, and an uploaded avatar is submitted for checking before the upload is answered.

Only applications with ``content_safety`` (``ApplicationInfo``) pay for it. The check is a ``ContentCheckJob`` on the
job stream, answered by an auth worker (``auth_worker/content_safety.py``), since only workers talk to WeChat. Updates
made with an application's own credentials (a server, not a user) are not screened: WeChat checks what a user of
the mini program submits, by that user's openid.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.params import verified_bearer
from shared.columns import named
from shared.errors import BadRequest, MinidoorError, error_from_wire
from shared.messages import (
    PASS,
    AvatarResult,
    AvatarReviewUpdate,
    ContentChecked,
    Credentials,
    LoginFailed,
    Reply,
)

#: The user object's field Casdoor calls the display name.
NAME_FIELD = "displayName"
REFUSED_NAME = "the display name was refused by content safety; choose another"


def _outcome(reply: Reply) -> ContentChecked:
    match reply:
        case ContentChecked():
            return reply
        case LoginFailed():
            raise error_from_wire(reply.status, reply.error, reply.error_description, reply.retry_after)
    raise AssertionError("unreachable")


async def screen_display_name(request: web.Request, caller: Credentials, user: dict[str, Any], columns: str) -> None:
    """Raise 400 unless WeChat passes the display name a bearer's update sets (when its application screens)."""
    name = user.get(NAME_FIELD)
    wanted = not columns.strip() or NAME_FIELD in named(columns)
    if not caller.access_token or not isinstance(name, str) or not name.strip() or not wanted:
        return
    client_id, user_id, app = await verified_bearer(request, caller.access_token)
    if not app.content_safety:
        return
    reply = await request.app[appkeys.PUBLISHER].check_content(
        request_id=request[appkeys.REQUEST_ID],
        client_id=client_id,
        user_id=user_id,
        kind="name",
        text=name,
        timeout=request.app[appkeys.CONFIG].login_timeout,
        client_ip=request[appkeys.CLIENT_IP],
    )
    if _outcome(reply).verdict != PASS:
        raise BadRequest(REFUSED_NAME)


async def submit_avatar(request: web.Request, caller: Credentials, result: AvatarResult) -> None:
    """Have a worker submit a pending avatar to WeChat and record the check's trace_id; an avatar that could not be
    submitted is dropped (and the upload answered with why), so none waits for a verdict that never comes."""
    store = request.app[appkeys.USER_STORE]
    request_id = request[appkeys.REQUEST_ID]
    try:
        client_id, user_id, _app = await verified_bearer(request, caller.access_token)
        reply = await request.app[appkeys.PUBLISHER].check_content(
            request_id=request_id,
            client_id=client_id,
            user_id=user_id,
            kind="avatar",
            media_url=result.url,
            timeout=request.app[appkeys.CONFIG].login_timeout,
            client_ip=request[appkeys.CLIENT_IP],
        )
        checked = _outcome(reply)
    except MinidoorError:
        await store.discard_avatar_review(AvatarReviewUpdate(review_id=result.review_id), request_id=request_id)
        raise
    if checked.trace_id:
        update = AvatarReviewUpdate(review_id=result.review_id, trace_id=checked.trace_id)
        await store.record_avatar_trace(update, request_id=request_id)
