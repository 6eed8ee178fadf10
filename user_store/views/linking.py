"""``POST /internal/account/link-wechat`` (from a worker that exchanged the code) and ``.../unlink-wechat`` (from the
gateway, with the caller's credentials): ``user_store/linking.py``."""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from shared.guard import log_id
from shared.messages import UnlinkWechat, WechatLink
from user_store.appkeys import AUDIT, MASTER_KEY, PG_POOL, SIGNER
from user_store.http import json_response, read_json
from user_store.linking import link_wechat, unlink_wechat

_link_decoder = msgspec.json.Decoder(WechatLink)
_unlink_decoder = msgspec.json.Decoder(UnlinkWechat)


async def link(request: web.Request) -> web.Response:
    body = await read_json(request, _link_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(body.client_id))
    app = request.app
    return json_response(await link_wechat(app[PG_POOL], body, app[AUDIT], app[MASTER_KEY]))


async def unlink(request: web.Request) -> web.Response:
    body = await read_json(request, _unlink_decoder)
    app = request.app
    return json_response(await unlink_wechat(app[PG_POOL], app[SIGNER], body, app[AUDIT]))
