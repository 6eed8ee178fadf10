"""Who calls an account route, as Casdoor's auto-sign-in filter reads it (casdoor-api.md §3).

A bearer access token, from the ``accessToken`` or ``access_token`` parameter or the ``Authorization: Bearer``
header (any case of the scheme; Casdoor wants exactly "Bearer"); else the application's client credentials, from
HTTP Basic or the ``clientId``/``clientSecret`` parameters. Parameters come from the URL query and a form body.

Nothing is trusted here: the credentials travel to the user store with the operation, which checks them (the
token's signature, row, revocation and user state) in the same request. Every account route needs the user store
anyway, so this costs no extra round trip, and a revocation or a forbidden user is seen at once on every gateway.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl

from aiohttp import web

from shared.errors import PLEASE_LOGIN, BadRequest, PayloadTooLarge, Unauthorized
from shared.messages import Credentials

_FORM = "application/x-www-form-urlencoded"


async def read_body(request: web.Request) -> bytes:
    if not request.body_exists:
        return b""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the request body is larger than {request.client_max_size} bytes") from None


async def read_params(request: web.Request) -> dict[str, str]:
    """The URL query, overridden by an ``application/x-www-form-urlencoded`` body."""
    params: dict[str, str] = dict(request.query)
    if request.content_type == _FORM:
        body = await read_body(request)
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise BadRequest("the form body is not valid UTF-8") from None
    return params


def credentials(request: web.Request, params: dict[str, str], *, required: bool = True) -> Credentials:
    """The caller's credentials, unchecked; when ``required``, ``Unauthorized`` at once if it sent none, before any
    of its input is read."""
    token = params.get("accessToken") or params.get("access_token") or ""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if not token and scheme == "bearer" and value:
        token = value
    if token:
        return Credentials(access_token=token)
    client_id, client_secret = params.get("clientId", ""), params.get("clientSecret", "")
    if not client_id and not client_secret and scheme == "basic" and value:
        client_id, client_secret = _basic(value)
    if required and not client_id and not client_secret:
        raise Unauthorized(PLEASE_LOGIN)
    return Credentials(client_id=client_id, client_secret=client_secret)


def _basic(encoded: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest("the Authorization header is not valid HTTP Basic") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise BadRequest("the Authorization header is not valid HTTP Basic")
    return client_id, secret
