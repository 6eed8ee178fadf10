"""Casdoor's account API: ``get-account``, ``userinfo``, ``get-user``, ``get-users``, ``update-user``, ``logout``.

Each view reads the caller's credentials (``gateway/params.py``) and its parameters, and asks the user store, which
authenticates and acts in one request. Answers use Casdoor's envelope (``gateway/responses.py``), except userinfo's
raw claims; errors get the envelope from the error middleware.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import appkeys
from gateway.content_safety import screen_display_name
from gateway.params import caller_credentials, read_account_params, read_body
from gateway.responses import envelope_ok, private_json
from gateway.views import avatars, linking, rights, wechat_data
from shared.errors import BadRequest
from shared.messages import LogoutRequest, UserQuery, UserUpdate

_decode_json = msgspec.json.Decoder()


def _int(params: dict[str, str], name: str) -> int:
    value = params.get(name, "")
    if not value:
        return 0
    # isascii too: str.isdigit() is true of "²", which int() refuses (a 500 that fuzzing found).
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise BadRequest("{name} must be a positive whole number", name=name)
    return int(value)


async def _query(request: web.Request) -> UserQuery:
    params = await read_account_params(request)
    caller = caller_credentials(request, params)
    return UserQuery(
        credentials=caller,
        id=params.get("id", ""),
        owner=params.get("owner", ""),
        user_id=params.get("userId", ""),
        email=params.get("email", ""),
        phone=params.get("phone", ""),
        page=_int(params, "p"),
        page_size=_int(params, "pageSize"),
    )


async def get_account(request: web.Request) -> web.Response:
    """``GET /api/get-account``: the bearer's user (``data``) and organization (``data2``). Unlike Casdoor, no new
    token is minted per call."""
    account = await request.app[appkeys.USER_STORE].get_account(
        await _query(request), request_id=request[appkeys.REQUEST_ID]
    )
    return envelope_ok(account.user, data2=account.organization, sub=account.user.id, name=account.user.name)


async def userinfo(request: web.Request) -> web.Response:
    """``GET|POST /api/userinfo``: OIDC claims, raw JSON as in Casdoor."""
    claims = await request.app[appkeys.USER_STORE].userinfo(
        await _query(request), request_id=request[appkeys.REQUEST_ID]
    )
    return private_json(claims)


async def get_user(request: web.Request) -> web.Response:
    """``GET /api/get-user?id=owner/name`` (or ``owner`` with ``userId``, ``email`` or ``phone``)."""
    user = await request.app[appkeys.USER_STORE].get_user(await _query(request), request_id=request[appkeys.REQUEST_ID])
    return envelope_ok(user)


async def get_users(request: web.Request) -> web.Response:
    """``GET /api/get-users?owner=org``: every user, or page ``p`` of ``pageSize`` with the total in ``data2``."""
    query = await _query(request)
    result = await request.app[appkeys.USER_STORE].get_users(query, request_id=request[appkeys.REQUEST_ID])
    return envelope_ok(result.users, data2=result.total if query.page_size else None)


async def update_user(request: web.Request) -> web.Response:
    """``POST /api/update-user``: a JSON user object as the body, whatever its Content-Type (Casdoor reads the raw
    body, and its SDKs send none); ``data`` is "Affected" or "Unaffected"."""
    params = dict(request.query)
    caller = caller_credentials(request, params)
    user = _user_object(await read_body(request))
    await screen_display_name(request, caller, user, params.get("columns", ""))
    update = UserUpdate(
        credentials=caller,
        user=user,
        id=params.get("id", ""),
        owner=params.get("owner", ""),
        user_id=params.get("userId", ""),
        columns=params.get("columns", ""),
    )
    result = await request.app[appkeys.USER_STORE].update_user(
        update, request_id=request[appkeys.REQUEST_ID], client_ip=request[appkeys.CLIENT_IP]
    )
    return envelope_ok("Affected" if result.affected else "Unaffected")


def _user_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise BadRequest("the body must be the user as a JSON object")
    try:
        doc = _decode_json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest("the body is not valid JSON: {detail}", detail=str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be the user as a JSON object")
    return doc


async def logout(request: web.Request) -> web.Response:
    """``GET|POST /api/logout``: revokes the bearer token's login (access and refresh token, the whole refresh
    chain), or that of ``id_token_hint``; Casdoor only ends its cookie session unless given the hint."""
    params = await read_account_params(request)
    hint = params.get("id_token_hint", "")
    req = LogoutRequest(credentials=caller_credentials(request, params, required=not hint), id_token_hint=hint)
    result = await request.app[appkeys.USER_STORE].logout(
        req, request_id=request[appkeys.REQUEST_ID], client_ip=request[appkeys.CLIENT_IP]
    )
    await request.app[appkeys.VERIFIER].sync()  # the next introspection here reads the revocation
    return envelope_ok(result.user)


#: Casdoor's account routes and the users' rights routes (``rights.py``). Their answers, errors included, use
#: Casdoor's envelope (``middleware.render_error``).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/get-account", get_account),
    ("GET", "/api/userinfo", userinfo),
    ("POST", "/api/userinfo", userinfo),
    ("GET", "/api/get-user", get_user),
    ("GET", "/api/get-users", get_users),
    ("POST", "/api/update-user", update_user),
    ("GET", "/api/logout", logout),
    ("POST", "/api/logout", logout),
    *rights.ROUTES,  # users' rights: deletion and export
    ("POST", linking.LINK_PATH, linking.link_wechat),
    ("POST", linking.UNLINK_PATH, linking.unlink_wechat),
)
#: Every route answering Casdoor's envelope: the account API, the avatar upload and the encryptedData decryption.
ENVELOPE_PATHS = frozenset(path for _method, path, _handler in ROUTES) | {avatars.UPLOAD_PATH, wechat_data.DECRYPT_PATH}
