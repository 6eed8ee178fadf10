"""``POST /api/link-wechat`` and ``POST /api/unlink-wechat``: attach the WeChat identity of a fresh wx.login() code to
the bearer's account, or remove one. Linking presents the code to WeChat, so it is a job for the auth workers, through
the code's exchange record like a login (``gateway/login_jobs.py``): exchanged once, whichever route presents it.
Answers and errors use Casdoor's envelope, as the account API's do."""

from __future__ import annotations

import re

from aiohttp import web

from gateway import appkeys
from gateway.params import caller_credentials, read_account_params, verified_bearer
from gateway.responses import envelope_ok
from shared.errors import BadRequest, Unauthorized, error_from_wire
from shared.messages import LoginFailed, UnlinkWechat, WechatLinked

LINK_PATH = "/api/link-wechat"
UNLINK_PATH = "/api/unlink-wechat"
_CODE = re.compile(r"^[\x21-\x7e]{1,256}$")


async def link_wechat(request: web.Request) -> web.Response:
    """``code`` (from wx.login()) and a bearer access token: ``{"status": "ok", "data": {"appid", "linked"}}``;
    409 when the identity is another user's."""
    params = await read_account_params(request)
    credentials = caller_credentials(request, params)
    if not credentials.access_token:
        raise Unauthorized("link-wechat needs the user's access token (Authorization: Bearer ...)")
    code = params.get("code", "")
    if not code:
        raise BadRequest("code is missing; send a fresh code from wx.login()")
    if not _CODE.match(code):
        raise BadRequest("code is malformed; send the code from wx.login() unchanged")
    client_id, user_id, app = await verified_bearer(request, credentials.access_token)
    if not app.miniprogram_appid:
        raise BadRequest("the token's application has no WeChat mini program")
    reply = await request.app[appkeys.PUBLISHER].exchange_link(
        request_id=request[appkeys.REQUEST_ID],
        client_id=client_id,
        user_id=user_id,
        code=code,
        timeout=request.app[appkeys.CONFIG].login_timeout,
        client_ip=request[appkeys.CLIENT_IP],
    )
    match reply:
        case WechatLinked():
            return envelope_ok({"appid": reply.appid, "linked": reply.linked})
        case LoginFailed():
            raise error_from_wire(reply.status, reply.error, reply.error_description, reply.retry_after)
    raise AssertionError("unreachable")


async def unlink_wechat(request: web.Request) -> web.Response:
    """Optional ``appid`` (default: the AppID of the token's application): ``{"status": "ok", "data": {"appid",
    "linked": false}}``; 400 for the account's last way to sign in."""
    params = await read_account_params(request)
    req = UnlinkWechat(credentials=caller_credentials(request, params), appid=params.get("appid", ""))
    result = await request.app[appkeys.USER_STORE].unlink_wechat(
        req, request_id=request[appkeys.REQUEST_ID], client_ip=request[appkeys.CLIENT_IP]
    )
    return envelope_ok({"appid": result.appid, "linked": result.linked})
