"""Users' rights: ``POST /api/delete-account`` (the user itself), Casdoor's ``POST /api/delete-user`` (the
application or an organization admin) and ``GET /api/export-account`` (the user's data as JSON).

A user proves a deletion twice: its access token, and a fresh ``wx.login()`` code (``code``), which this gateway
exchanges through the job stream as a login (the worker asks WeChat whose code it is); the user store then checks
that the login it made is the same user's and moments old. A password (``password``, in the form body) is the
alternative for accounts that have one. Answers use Casdoor's envelope, errors included.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import appkeys
from gateway.params import caller_credentials, read_account_params, read_body, verified_bearer
from gateway.responses import envelope_ok
from shared.errors import BadRequest, Unauthorized, error_from_wire
from shared.messages import DeleteAccountRequest, DeleteUserRequest, LoginFailed, LoginSucceeded, UserQuery

DELETE_ACCOUNT_PATH = "/api/delete-account"
DELETE_USER_PATH = "/api/delete-user"
EXPORT_ACCOUNT_PATH = "/api/export-account"
# As on the token endpoint: wx.login() codes are short printable tokens.
_CODE = re.compile(r"^[\x21-\x7e]{1,256}$")
_decode_json = msgspec.json.Decoder()


async def delete_account(request: web.Request) -> web.Response:
    """``POST /api/delete-account``: the bearer's own account, with ``code`` (a fresh wx.login() code) or
    ``password``; every token of the user is revoked on every gateway within a second."""
    params = await read_account_params(request)
    if "password" in request.query:
        raise BadRequest("send the password in the form body, never in the URL")
    credentials = caller_credentials(request, params)
    if not credentials.access_token:
        raise Unauthorized("delete-account needs the user's access token (Authorization: Bearer ...)")
    code, password = params.get("code", ""), params.get("password", "")
    proof = ""
    if code:
        if not _CODE.match(code):
            raise BadRequest("code is malformed; send the code from wx.login() unchanged")
        proof = await _proof_login(request, credentials.access_token, code)
    elif not password:
        raise BadRequest("deleting an account needs a fresh wx.login() code (code) or the account's password")
    result = await request.app[appkeys.USER_STORE].delete_account(
        DeleteAccountRequest(credentials=credentials, proof_token=proof, password=password if not proof else ""),
        request_id=request[appkeys.REQUEST_ID],
        client_ip=request[appkeys.CLIENT_IP],
    )
    await request.app[appkeys.VERIFIER].sync()  # the next introspection here reads the revocations
    return envelope_ok("Affected" if result.affected else "Unaffected")


async def _proof_login(request: web.Request, access_token: str, code: str) -> str:
    """The access token of a login with ``code`` in the bearer's application: the job stream, the worker and WeChat,
    as on the token endpoint. The bearer is verified here first, so a forged token spends no code."""
    client_id, _user_id, app = await verified_bearer(request, access_token)
    if not app.miniprogram_appid:
        raise BadRequest("the application has no WeChat mini-program provider: prove the deletion with the password")
    reply = await request.app[appkeys.PUBLISHER].exchange(
        request_id=request[appkeys.REQUEST_ID],
        client_id=client_id,
        code=code,
        username="",
        avatar="",
        timeout=request.app[appkeys.CONFIG].login_timeout,
        client_ip=request[appkeys.CLIENT_IP],
    )
    match reply:
        case LoginSucceeded(token=token):
            return token.access_token
        case LoginFailed():
            raise error_from_wire(reply.status, reply.error, reply.error_description, reply.retry_after)
    raise AssertionError("unreachable")


async def delete_user(request: web.Request) -> web.Response:
    """``POST /api/delete-user?id=owner/name``: Casdoor's delete-user, as its SDKs call it (client credentials in
    the query, the user as a JSON body); ``data`` is "Affected", or "Unaffected" for no such user."""
    params = dict(request.query)
    credentials = caller_credentials(request, params)
    user = _user_object(await read_body(request))
    owner, name = user.get("owner"), user.get("name")
    result = await request.app[appkeys.USER_STORE].delete_user(
        DeleteUserRequest(
            credentials=credentials,
            id=params.get("id", ""),
            owner=owner if isinstance(owner, str) else "",
            name=name if isinstance(name, str) else "",
        ),
        request_id=request[appkeys.REQUEST_ID],
        client_ip=request[appkeys.CLIENT_IP],
    )
    await request.app[appkeys.VERIFIER].sync()
    return envelope_ok("Affected" if result.affected else "Unaffected")


def _user_object(body: bytes) -> dict[str, Any]:
    """The body's user object; an empty body is none (the target is then ``id``)."""
    if not body.strip():
        return {}
    try:
        doc = _decode_json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest("the body is not valid JSON: {detail}", detail=str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be the user as a JSON object")
    return doc


async def export_account(request: web.Request) -> web.Response:
    """``GET /api/export-account``: everything minidoor holds about the bearer's user (``data``)."""
    params = await read_account_params(request)
    document = await request.app[appkeys.USER_STORE].export_account(
        UserQuery(credentials=caller_credentials(request, params)),
        request_id=request[appkeys.REQUEST_ID],
        client_ip=request[appkeys.CLIENT_IP],
    )
    return envelope_ok(document)


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", DELETE_ACCOUNT_PATH, delete_account),
    ("POST", DELETE_USER_PATH, delete_user),
    ("GET", EXPORT_ACCOUNT_PATH, export_account),
)
