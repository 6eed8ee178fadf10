"""``GET|POST /api/wechat-push/{appid}``: the URL a mini program's message push is configured with in WeChat's
console (``make set-content-safety`` prints it and its Token). WeChat checks the URL with a GET (answered with its
``echostr``) and POSTs events, of which minidoor acts on ``wxa_media_check``: an avatar's content-security verdict.

The gateway only carries the request: the user store checks WeChat's signature (the Token derives from the
AppSecret it holds) and applies the verdict (``user_store/content_safety.py``). Answers are plain text, as WeChat
expects ("success", or the echostr); errors are WeChat-agnostic JSON with the right status.
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway import appkeys
from shared.errors import BadRequest, NotFound
from shared.guard import body_limit
from shared.messages import WechatPush

PUSH_PATH = "/api/wechat-push/{appid}"
PUSH_PREFIX = "/api/wechat-push/"
#: WeChat's events are small JSON documents.
PUSH_BODY_BYTES = 32 * 1024  # base64 in the user store's JSON: under its MAX_BODY_BYTES
_APPID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PARAM = re.compile(r"^[A-Za-z0-9]{0,128}$")


@body_limit(PUSH_BODY_BYTES)
async def wechat_push(request: web.Request) -> web.Response:
    appid = request.match_info["appid"]
    if not _APPID.match(appid):
        raise NotFound("no mini program has this AppID")
    query = request.query
    fields = {name: query.get(name, "") for name in ("signature", "timestamp", "nonce", "echostr")}
    if not all(_PARAM.match(value) for value in fields.values()):
        raise BadRequest("signature, timestamp, nonce and echostr must be letters and digits")
    body = await request.read() if request.method == "POST" else b""
    answer = await request.app[appkeys.USER_STORE].wechat_push(
        WechatPush(appid=appid, method=request.method, body=body, **fields),
        request_id=request[appkeys.REQUEST_ID],
        client_ip=request[appkeys.CLIENT_IP],
    )
    return web.Response(text=answer.text, content_type="text/plain")


ROUTES = (
    ("GET", PUSH_PATH, wechat_push),
    ("POST", PUSH_PATH, wechat_push),
)
