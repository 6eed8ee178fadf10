"""``POST /internal/tokens/refresh``: the refresh_token grant, with rotation (``user_store/refresh.py``)."""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from shared.guard import log_id
from shared.messages import (
    RefreshRequest,
)
from user_store.appkeys import AUDIT, PG_POOL, REVOCATIONS, SIGNER
from user_store.http import json_response, read_json
from user_store.refresh import refresh_tokens

_refresh_decoder = msgspec.json.Decoder(RefreshRequest)


async def refresh(request: web.Request) -> web.Response:
    req = await read_json(request, _refresh_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(req.client_id))
    app = request.app
    response = await refresh_tokens(app[PG_POOL], app[SIGNER], app[REVOCATIONS], req, app[AUDIT])
    return json_response(response)
