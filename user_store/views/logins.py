"""``POST /internal/logins/wechat-miniprogram``: an auth worker hands over a code WeChat accepted; the user is found or
created and the token pair minted (``user_store/logins.py``)."""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from shared.guard import log_id
from shared.messages import WechatLogin
from user_store.appkeys import AUDIT, MASTER_KEY, PG_POOL, RULES, SIGNER
from user_store.http import json_response, read_json
from user_store.logins import login_wechat

_login_decoder = msgspec.json.Decoder(WechatLogin)


async def wechat_login(request: web.Request) -> web.Response:
    login = await read_json(request, _login_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(login.client_id))
    app = request.app
    result = await login_wechat(app[PG_POOL], app[SIGNER], login, app[RULES], app[AUDIT], app[MASTER_KEY])
    return json_response(result)
