"""``POST /api/decrypt-wechat-data``: a mini program's legacy ``encryptedData`` and ``iv`` (the old
``getPhoneNumber`` / ``getUserInfo`` callbacks), decrypted by the user store with the session_key of the bearer
token's own login, which never leaves it (``user_store/wechat_data.py``)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from gateway import appkeys
from gateway.params import caller_credentials, checked, read_account_params, read_body
from gateway.responses import envelope_ok
from shared.errors import BadRequest, Unauthorized
from shared.messages import WechatDataRequest

DECRYPT_PATH = "/api/decrypt-wechat-data"


async def decrypt_wechat_data(request: web.Request) -> web.Response:
    """Parameters ``encryptedData`` and ``iv`` in a form or JSON body (or the query); ``data``: the decrypted
    object, watermark included."""
    params = dict(await read_account_params(request))
    caller = caller_credentials(request, params)
    if not caller.access_token:
        raise Unauthorized("decrypt-wechat-data needs the user's access token (Authorization: Bearer ...)")
    if request.content_type == "application/json":
        params.update(_json_fields(await read_body(request)))
    encrypted, iv = params.get("encryptedData", ""), params.get("iv", "")
    if not encrypted or not iv:
        raise BadRequest("send encryptedData and iv as the mini program received them")
    result = await request.app[appkeys.USER_STORE].decrypt_wechat_data(
        WechatDataRequest(credentials=caller, encrypted_data=encrypted, iv=iv),
        request_id=request[appkeys.REQUEST_ID],
        client_ip=request[appkeys.CLIENT_IP],
    )
    return envelope_ok(result.data)


def _json_fields(body: bytes) -> dict[str, str]:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest("the body is not valid JSON: {detail}", detail=str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRequest("the JSON body must be an object")
    fields = {key: doc[key] for key in ("encryptedData", "iv") if key in doc}
    if not all(isinstance(value, str) for value in fields.values()):
        raise BadRequest("encryptedData and iv must be strings")
    return checked(fields)


ROUTES = (("POST", DECRYPT_PATH, decrypt_wechat_data),)
