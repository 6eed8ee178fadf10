"""Token validation, public side: RFC 7662 introspection, RFC 7009 revocation, the JWKS and OpenID discovery (each
answered by the user store), and the ``Verifier`` in the gateway's lifecycle for bearer-token authentication."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
from aiohttp import web

from gateway import appkeys
from gateway.params import read_params
from shared.errors import BadRequest
from shared.messages import TokenRequest
from shared.verifier import Verifier

#: The JWKS may be cached a minute: a rotation lists a new key 90 s before it signs (``keyring.DEFAULT_ACTIVATE_IN``).
JWKS_MAX_AGE = 60
DISCOVERY_MAX_AGE = 3600
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_json = msgspec.json.Encoder()


def _token_request(params: Mapping[str, str]) -> TokenRequest:
    """Client credentials from Basic or the form (``read_params``), the token and its hint from the query or form."""
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
    req = _token_request(await read_params(request))
    result = await request.app[appkeys.USER_STORE].introspect(req, request_id=request[appkeys.REQUEST_ID])
    return web.Response(body=_json.encode(result), content_type="application/json", headers=_NO_STORE)


async def revoke(request: web.Request) -> web.Response:
    """``POST /api/login/oauth/revoke`` (RFC 7009): 200 with an empty body, for unknown tokens too."""
    req = _token_request(await read_params(request))
    await request.app[appkeys.USER_STORE].revoke(
        req, request_id=request[appkeys.REQUEST_ID], client_ip=request[appkeys.CLIENT_IP]
    )
    return web.Response(status=200, headers=_NO_STORE)


async def jwks(request: web.Request) -> web.Response:
    """``GET /.well-known/jwks``: every key that still verifies a live token."""
    doc = await request.app[appkeys.USER_STORE].get_jwks(request_id=request[appkeys.REQUEST_ID])
    return _cacheable(request, _json.encode(doc), JWKS_MAX_AGE)


async def openid_configuration(request: web.Request) -> web.Response:
    """``GET /.well-known/openid-configuration``; the issuer is the configured one, whatever the Host header."""
    doc = await request.app[appkeys.USER_STORE].get_openid_configuration(request_id=request[appkeys.REQUEST_ID])
    return _cacheable(request, _json.encode(doc), DISCOVERY_MAX_AGE)


def _cacheable(request: web.Request, body: bytes, max_age: int) -> web.Response:
    """A public, cacheable answer with a strong ETag, and 304 for a poller that already has it."""
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag}
    wanted = {tag.strip().removeprefix("W/") for tag in request.headers.get("If-None-Match", "").split(",")}
    if etag in wanted or "*" in wanted:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """``app[appkeys.VERIFIER]``: checks bearer tokens of every application locally (JWKS from the user store,
    revocations from Redis). It starts in the background, so the gateway comes up while either is away."""
    client = app[appkeys.USER_STORE]

    async def fetch_jwks() -> Mapping[str, Any]:
        doc: dict[str, Any] = msgspec.to_builtins(await client.get_jwks())
        return doc

    verifier = Verifier(
        issuer=app[appkeys.CONFIG].issuer,
        audience=None,
        jwks=fetch_jwks,
        redis=app[appkeys.REDIS],
        redis_keys=app[appkeys.REDIS_KEYS],
    )
    await verifier.start()
    app[appkeys.VERIFIER] = verifier
    yield
    await verifier.close()
