"""Public HTTP handlers."""

from __future__ import annotations

import re

import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from gateway import appkeys, refresh
from gateway.params import read_params
from shared.errors import BadRequest, MinidoorError, Unauthorized, error_from_wire
from shared.messages import LoginFailed, LoginSucceeded

MINIPROGRAM_TAG = "wechat_miniprogram"
# wx.login() codes are short printable tokens; anything else is not worth a WeChat call.
_CODE = re.compile(r"^[\x21-\x7e]{1,256}$")
_json = msgspec.json.Encoder()


async def access_token(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/access_token``: Casdoor's token endpoint, mini-program branch and refresh grant."""
    params = await read_params(request)
    is_refresh = params.get("tag") != MINIPROGRAM_TAG and params.get("grant_type") == refresh.GRANT_TYPE
    if is_refresh:
        request[appkeys.TOKEN_GRANT] = refresh.GRANT_TYPE
    client_id = params.get("client_id", "")
    if not client_id:
        raise Unauthorized("client_id is missing")
    app = await request.app[appkeys.APPLICATIONS].get(client_id, request_id=request[appkeys.REQUEST_ID])

    tag = params.get("tag", "")
    if is_refresh:
        return await refresh.refresh_grant(request, params)
    if tag != MINIPROGRAM_TAG:
        if params.get("grant_type"):
            raise MinidoorError(
                f"grant_type {params['grant_type']!r} is not supported here; mini programs send tag=wechat_miniprogram",
                error="unsupported_grant_type",
                status=400,
            )
        raise BadRequest("tag is missing; a mini-program login sends tag=wechat_miniprogram with the wx.login() code")
    if not app.miniprogram_appid:
        raise Unauthorized("the application does not support wechat mini program")
    code = params.get("code", "")
    if not code:
        raise BadRequest("code is missing; send the code from wx.login()")
    if not _CODE.match(code):
        raise BadRequest("code is malformed; send the code from wx.login() unchanged")

    config = request.app[appkeys.CONFIG]
    reply = await request.app[appkeys.PUBLISHER].exchange(
        request_id=request[appkeys.REQUEST_ID],
        client_id=client_id,
        code=code,
        username=params.get("username", ""),
        avatar=params.get("avatar", ""),
        timeout=config.login_timeout,
        client_ip=request[appkeys.CLIENT_IP],
    )
    match reply:
        case LoginSucceeded(token=token):
            return web.Response(
                body=_json.encode(token),
                content_type="application/json",
                headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
            )
        case LoginFailed():
            raise error_from_wire(reply.status, reply.error, reply.error_description, reply.retry_after)
    raise AssertionError("unreachable")


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: Redis answers (the user store has its own /readyz)."""
    try:
        await request.app[appkeys.REDIS].ping()
    except (aioredis.RedisError, OSError) as exc:
        return web.json_response({"status": "unavailable", "redis": str(exc)}, status=503)
    return web.json_response({"status": "ok"})
