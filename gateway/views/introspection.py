"""RFC 7662 introspection (``POST /api/login/oauth/introspect``) and RFC 7009 revocation
(``POST /api/login/oauth/revoke``): a client authenticates and names a token. Introspection is answered here when
the gateway knows the user store's answer (``gateway/introspector.py``), else by the store; revocation by the store."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway import appkeys
from gateway.params import read_oauth_params
from gateway.responses import NO_STORE
from shared.errors import BadRequest
from shared.messages import TokenRequest

#: The JWKS may be cached a minute: a rotation lists a new key 90 s before it signs (``keyring.DEFAULT_ACTIVATE_IN``).
JWKS_MAX_AGE = 60
DISCOVERY_MAX_AGE = 3600


def _token_request(params: Mapping[str, str]) -> TokenRequest:
    """Client credentials from Basic or the form (``read_oauth_params``), the token and its hint from the query or
    form."""
    client_id, client_secret = params.get("client_id", ""), params.get("client_secret", "")
    if not client_id or not client_secret:
        raise BadRequest("client authentication is required: HTTP Basic, or client_id and client_secret")
    token = params.get("token", "")
    if not token:
        raise BadRequest("token is missing")
    return TokenRequest(
        client_id=client_id,
        client_secret=client_secret,
        token=token,
        token_type_hint=params.get("token_type_hint", ""),
    )


async def introspect(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/introspect`` (RFC 7662): ``{"active": false}`` with 200 for any token not live."""
    req = _token_request(await read_oauth_params(request))
    body = await request.app[appkeys.INTROSPECTOR].introspect(req, request_id=request[appkeys.REQUEST_ID])
    return web.Response(body=body, content_type="application/json", headers=NO_STORE)


async def revoke(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/revoke`` (RFC 7009): 200 with an empty body, for unknown tokens too. Answered once
    this gateway has applied the revocation, so the client's next introspection here reads it."""
    req = _token_request(await read_oauth_params(request))
    await request.app[appkeys.USER_STORE].revoke(
        req, request_id=request[appkeys.REQUEST_ID], client_ip=request[appkeys.CLIENT_IP]
    )
    await request.app[appkeys.VERIFIER].sync()
    return web.Response(status=200, headers=NO_STORE)
