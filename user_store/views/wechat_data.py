"""``POST /internal/wechat-data/decrypt``: a legacy ``encryptedData`` opened with the bearer's login's session_key
(``user_store/wechat_data.py``)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from shared.messages import WechatDataRequest
from user_store.appkeys import AUDIT, CONFIG, MASTER_KEY, PG_POOL, SIGNER
from user_store.http import json_response, read_json
from user_store.wechat_data import decrypt_for_caller

_decoder = msgspec.json.Decoder(WechatDataRequest)


async def decrypt(request: web.Request) -> web.Response:
    body = await read_json(request, _decoder)
    app = request.app
    result = await decrypt_for_caller(
        app[PG_POOL],
        app[SIGNER],
        body,
        master=app[MASTER_KEY],
        max_age=app[CONFIG].wechat_data_max_age,
        audit=app[AUDIT],
    )
    return json_response(result)
