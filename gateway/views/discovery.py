"""The JWKS (``GET /.well-known/jwks``) and OpenID discovery (``GET /.well-known/openid-configuration``), answered
by the user store and cacheable by clients."""

from __future__ import annotations

import hashlib

import msgspec
from aiohttp import web

from gateway import appkeys

#: The JWKS may be cached a minute: a rotation lists a new key 90 s before it signs (``keyring.DEFAULT_ACTIVATE_IN``).
JWKS_MAX_AGE = 60
DISCOVERY_MAX_AGE = 3600
_json = msgspec.json.Encoder()


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
