"""Casdoor's ``/api/*`` envelope (casdoor-api.md §1a): ``{status, msg, sub, name, data, data2, data3}``.

Casdoor answers errors with HTTP 200 and ``status: "error"``; minidoor keeps the body, so clients that read
``status`` and ``msg`` work unchanged, and gives the honest HTTP status besides (401, 403, 400, 404, 409, ...).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shared.errors import InvalidToken, MinidoorError

_json = msgspec.json.Encoder()
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Every key is always there, null when unused, as Casdoor's ``Response``."""

    status: str
    msg: str = ""
    sub: str = ""
    name: str = ""
    data: Any = None
    data2: Any = None
    data3: Any = None


def ok(data: Any = None, *, data2: Any = None, sub: str = "", name: str = "") -> web.Response:
    return web.Response(
        body=_json.encode(Envelope(status="ok", sub=sub, name=name, data=data, data2=data2)),
        content_type="application/json",
        headers=_NO_STORE,
    )


def raw(value: Any) -> web.Response:
    """A success that Casdoor answers without the envelope (``/api/userinfo``)."""
    return web.Response(body=_json.encode(value), content_type="application/json", headers=_NO_STORE)


def error_response(exc: MinidoorError) -> web.Response:
    resp = web.Response(
        body=_json.encode(Envelope(status="error", msg=exc.description)),
        status=exc.status,
        content_type="application/json",
        headers=_NO_STORE,
    )
    if exc.status == 401:
        # RFC 6750 §3: the challenge names the scheme, and the error when a token was presented.
        challenge = 'Bearer realm="minidoor"'
        if exc.error == InvalidToken.error:
            challenge += ', error="invalid_token"'
        resp.headers["WWW-Authenticate"] = challenge
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp
