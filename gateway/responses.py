"""The gateway's answers that no cache may keep, and Casdoor's envelope for successes and errors (the renderer that
picks an error's form by route is ``middleware.render_error``).

Casdoor's ``/api/*`` envelope (casdoor-api.md §1a) is ``{status, msg, sub, name, data, data2, data3}``. Casdoor
answers errors with HTTP 200 and ``status: "error"``; minidoor keeps the body, so clients that read ``status`` and
``msg`` work unchanged, and gives the honest HTTP status besides (401, 403, 400, 404, 409, ...). The OAuth endpoints
(``/api/login/oauth/*``) and every other path answer errors as OAuth's ``{error, error_description}``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shared.errors import InvalidToken, MinidoorError

#: Tokens, introspection answers and account data: never stored by a cache (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_json = msgspec.json.Encoder()


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Every key is always there, null when unused, as Casdoor's ``Response``."""

    status: str
    msg: str = ""
    sub: str = ""
    name: str = ""
    data: Any = None
    data2: Any = None
    data3: Any = None


def private_json(value: Any) -> web.Response:
    """``value`` as JSON that no cache keeps: a token response, an introspection, ``/api/userinfo``'s raw claims."""
    return web.Response(body=_json.encode(value), content_type="application/json", headers=NO_STORE)


def envelope_ok(data: Any = None, *, data2: Any = None, sub: str = "", name: str = "") -> web.Response:
    return web.Response(
        body=_json.encode(Envelope(status="ok", sub=sub, name=name, data=data, data2=data2)),
        content_type="application/json",
        headers=NO_STORE,
    )


def envelope_error(exc: MinidoorError, description: str | None = None) -> web.Response:
    """An error in Casdoor's envelope, with the honest status, the RFC 6750 §3 challenge on a 401 (naming the error
    when a token was presented) and ``Retry-After``; ``msg`` is ``description`` (a translation) or the English
    one."""
    response = web.Response(
        body=_json.encode(Envelope(status="error", msg=exc.description if description is None else description)),
        status=exc.status,
        content_type="application/json",
        headers=NO_STORE,
    )
    if exc.status == 401:
        challenge = 'Bearer realm="minidoor"'
        if exc.error == InvalidToken.error:
            challenge += ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = challenge
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
