"""Who calls an account route, as Casdoor's auto-sign-in filter reads it (casdoor-api.md §3).

A bearer access token, from the ``accessToken`` or ``access_token`` parameter or the ``Authorization: Bearer``
header (any case of the scheme; Casdoor wants exactly "Bearer"); else the application's client credentials, from
HTTP Basic or the ``clientId``/``clientSecret`` parameters. Parameters come from the URL query and a form body.

Nothing is trusted here: the credentials travel to the user store with the operation, which checks them (the
token's signature, row, revocation and user state) in the same request. Every account route needs the user store
anyway, so this costs no extra round trip, and a revocation or a forbidden user is seen at once on every gateway.
"""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.params import FORM, basic_pair, checked, form_fields, read_body
from shared.errors import PLEASE_LOGIN, Unauthorized
from shared.messages import Credentials


async def read_params(request: web.Request) -> dict[str, str]:
    """The URL query, overridden by an ``application/x-www-form-urlencoded`` body; parsed once per request (do not
    modify it)."""
    if appkeys.ACCOUNT_PARAMS in request:
        return request[appkeys.ACCOUNT_PARAMS]
    params: dict[str, str] = dict(request.query)
    if request.content_type == FORM:
        params.update(form_fields(await read_body(request)))
    request[appkeys.ACCOUNT_PARAMS] = checked(params)
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
        client_id, client_secret = basic_pair(value)
    if required and not client_id and not client_secret:
        raise Unauthorized(PLEASE_LOGIN)
    checked({"client_id": client_id, "client_secret": client_secret})
    return Credentials(client_id=client_id, client_secret=client_secret)
