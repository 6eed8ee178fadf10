"""The refresh_token grant: ``POST /api/login/oauth/refresh_token``, and ``grant_type=refresh_token`` on the token
endpoint (``views.access_token``). The user store rotates the pair (``user_store/refresh.py``)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from gateway import appkeys
from gateway.params import read_params
from shared.errors import BadRequest, MinidoorError, Unauthorized
from shared.messages import RefreshRequest

GRANT_TYPE = "refresh_token"
#: Casdoor's dedicated refresh endpoint; the token endpoint takes the grant too.
REFRESH_PATH = "/api/login/oauth/refresh_token"
_json = msgspec.json.Encoder()


async def refresh_grant(request: web.Request, params: dict[str, str]) -> web.Response:
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
    return web.Response(
        body=_json.encode(token),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


async def refresh_token(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/refresh_token``: Casdoor's dedicated refresh endpoint."""
    params = await read_params(request)
    if params.get("grant_type") != GRANT_TYPE:
        raise MinidoorError("grant_type should be refresh_token", error="unsupported_grant_type", status=400)
    return await refresh_grant(request, params)
