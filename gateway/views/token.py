"""The token endpoint, ``POST /api/login/oauth/access_token`` (the mini-program login and the refresh grant), and
Casdoor's dedicated refresh endpoint, ``POST /api/login/oauth/refresh_token``. A login is a job for the auth workers
(``gateway/login_jobs.py``); a refresh is one user-store call, which rotates the pair (``user_store/refresh.py``)."""

from __future__ import annotations

import re

from aiohttp import web

from gateway import appkeys
from gateway.params import read_oauth_params
from gateway.responses import private_json
from shared.errors import BadRequest, MinidoorError, Unauthorized, error_from_wire
from shared.messages import LoginFailed, LoginSucceeded, RefreshRequest

MINIPROGRAM_TAG = "wechat_miniprogram"
#: Sign-in with a ``getPhoneNumber`` button's code (and optionally a wx.login() code to link in the same step).
PHONE_TAG = "wechat_miniprogram_phone"
REFRESH_GRANT = "refresh_token"
#: Casdoor's dedicated refresh endpoint; the token endpoint takes the grant too.
REFRESH_PATH = "/api/login/oauth/refresh_token"
# wx.login() codes are short printable tokens; anything else is not worth a WeChat call.
_CODE = re.compile(r"^[\x21-\x7e]{1,256}$")


async def access_token(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/access_token``: Casdoor's token endpoint, mini-program branch and refresh grant."""
    params = await read_oauth_params(request)
    is_refresh = params.get("tag") not in (MINIPROGRAM_TAG, PHONE_TAG) and params.get("grant_type") == REFRESH_GRANT
    if is_refresh:
        request[appkeys.TOKEN_GRANT] = REFRESH_GRANT
    client_id = params.get("client_id", "")
    if not client_id:
        raise Unauthorized("client_id is missing")
    app = await request.app[appkeys.APPLICATIONS].get(client_id, request_id=request[appkeys.REQUEST_ID])

    tag = params.get("tag", "")
    if is_refresh:
        return await _refresh_grant(request, params)
    if tag == PHONE_TAG:
        return await _phone_sign_in(request, params, app.miniprogram_appid)
    if tag != MINIPROGRAM_TAG:
        if params.get("grant_type"):
            raise MinidoorError(
                "grant_type {grant_type!r} is not supported here; mini programs send tag=wechat_miniprogram",
                grant_type=params["grant_type"],
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
            return private_json(token)
        case LoginFailed():
            raise error_from_wire(
                reply.status,
                reply.error,
                reply.error_description,
                reply.retry_after,
                message=reply.message,
                params=reply.params,
            )
    raise AssertionError("unreachable")


async def _phone_sign_in(request: web.Request, params: dict[str, str], appid: str) -> web.Response:
    """``tag=wechat_miniprogram_phone``: ``code`` from the getPhoneNumber button, optional ``login_code``."""
    if not appid:
        raise Unauthorized("the application does not support wechat mini program")
    code = params.get("code", "")
    if not code:
        raise BadRequest("code is missing; send the code of the getPhoneNumber button's event (e.detail.code)")
    login_code = params.get("login_code", "")
    if not _CODE.match(code) or (login_code and not _CODE.match(login_code)):
        raise BadRequest("code or login_code is malformed; send them unchanged")
    if login_code == code:
        raise BadRequest("login_code is the phone code; send the code from wx.login() as login_code")
    reply = await request.app[appkeys.PUBLISHER].exchange_phone(
        request_id=request[appkeys.REQUEST_ID],
        client_id=params.get("client_id", ""),
        code=code,
        login_code=login_code,
        timeout=request.app[appkeys.CONFIG].login_timeout,
        client_ip=request[appkeys.CLIENT_IP],
    )
    match reply:
        case LoginSucceeded(token=token):
            return private_json(token)
        case LoginFailed():
            raise error_from_wire(reply.status, reply.error, reply.error_description, reply.retry_after)
    raise AssertionError("unreachable")


async def _refresh_grant(request: web.Request, params: dict[str, str]) -> web.Response:
    """New tokens for ``params['refresh_token']``; a mini program, a public client, sends no client_secret."""
    client_id = params.get("client_id", "")
    if not client_id:
        raise Unauthorized("client_id is missing")
    refresh_token = params.get("refresh_token", "")
    if not refresh_token:
        raise BadRequest("refresh_token is missing")
    req = RefreshRequest(
        client_id=client_id,
        client_secret=params.get("client_secret", ""),
        refresh_token=refresh_token,
        scope=params.get("scope", ""),
    )
    token = await request.app[appkeys.USER_STORE].refresh(
        req, request_id=request[appkeys.REQUEST_ID], client_ip=request[appkeys.CLIENT_IP]
    )
    return private_json(token)


async def refresh_token(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/refresh_token``: Casdoor's dedicated refresh endpoint."""
    params = await read_oauth_params(request)
    if params.get("grant_type") != REFRESH_GRANT:
        raise MinidoorError("grant_type should be refresh_token", error="unsupported_grant_type", status=400)
    return await _refresh_grant(request, params)
