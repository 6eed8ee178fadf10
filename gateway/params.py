"""The gateway's one request reader: parameters and credentials, read the way Casdoor reads them.

OAuth endpoints (``read_oauth_params``, casdoor-api.md §2.1): the URL query, overridden by an
``application/x-www-form-urlencoded`` body; then HTTP Basic for ``client_id``/``client_secret`` when both are still
empty; then a JSON body fills each field still empty.

Account routes (``read_account_params``, ``caller_credentials``, §3): the URL query, overridden by a form body. The
caller is a bearer access token, from the ``accessToken`` or ``access_token`` parameter or the
``Authorization: Bearer`` header (any case of the scheme; Casdoor wants exactly "Bearer"); else the application's
client credentials, from HTTP Basic or the ``clientId``/``clientSecret`` parameters. Nothing is trusted here: the
credentials travel to the user store with the operation, which checks them (the token's signature, row, revocation
and user state) in the same request, so a revocation or a forbidden user is seen at once on every gateway.

Either parse is done once per request and cached on it, so the rate-limit middleware and the view share it.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec
from aiohttp import web

from gateway import appkeys
from shared.errors import PLEASE_LOGIN, BadRequest, InvalidToken, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from shared.forms import FORM, basic_credentials, basic_pair, form_fields
from shared.guard import check_field, valid_client_id
from shared.messages import ApplicationInfo, Credentials

#: The fields Casdoor takes from a JSON body.
JSON_FIELDS = (
    "client_id", "client_secret", "grant_type", "code", "code_verifier", "scope", "nonce", "username", "password",
    "tag", "avatar", "refresh_token", "subject_token", "subject_token_type", "audience", "resource", "assertion",
    "client_assertion", "client_assertion_type",
)  # fmt: skip


async def read_oauth_params(request: web.Request) -> dict[str, str]:
    """All OAuth parameters of ``request``, parsed once per request (do not modify them); raises a clear
    ``MinidoorError`` for a body it cannot read."""
    if appkeys.OAUTH_PARAMS in request:
        return request[appkeys.OAUTH_PARAMS]
    params: dict[str, str] = dict(request.query)
    body = await read_body(request)
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    if body and content_type == FORM:
        params.update(form_fields(body))

    if not params.get("client_id") and not params.get("client_secret"):
        basic = _basic_credentials(request)
        if basic is not None:
            params["client_id"], params["client_secret"] = basic

    if body and content_type != FORM:
        for key, value in _json_fields(body, content_type).items():
            if not params.get(key):
                params[key] = value
    checked(params)
    request[appkeys.OAUTH_PARAMS] = params
    return params


async def read_account_params(request: web.Request) -> dict[str, str]:
    """The URL query, overridden by an ``application/x-www-form-urlencoded`` body; parsed once per request (do not
    modify it)."""
    if appkeys.ACCOUNT_PARAMS in request:
        return request[appkeys.ACCOUNT_PARAMS]
    params: dict[str, str] = dict(request.query)
    if request.content_type == FORM:
        params.update(form_fields(await read_body(request)))
    request[appkeys.ACCOUNT_PARAMS] = checked(params)
    return params


def caller_credentials(request: web.Request, params: dict[str, str], *, required: bool = True) -> Credentials:
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


class Bearer(NamedTuple):
    """A verified bearer token's user (``sub``) and application (``aud``), and what the gateway knows of it."""

    client_id: str
    user_id: str
    app: ApplicationInfo


async def verified_bearer(request: web.Request, access_token: str) -> Bearer:
    """The bearer behind ``access_token``, its signature and state checked here (a forged token costs no job)."""
    claims = await request.app[appkeys.VERIFIER].verify(access_token)
    audience = claims.get("aud")
    client_id = audience[0] if isinstance(audience, list) and audience else audience
    user_id = claims.get("sub")
    if not isinstance(client_id, str) or not isinstance(user_id, str) or not client_id or not user_id:
        raise InvalidToken("the access token names no user or application")
    app = await request.app[appkeys.APPLICATIONS].get(client_id, request_id=request[appkeys.REQUEST_ID])
    return Bearer(client_id, user_id, app)


def checked(params: dict[str, str]) -> dict[str, str]:
    """``params`` once no value is oversized and the client id could be one; a client id that cannot be valid is
    refused here, so it never costs a user-store call (nor lands in its log)."""
    for key in ("client_id", "clientId"):
        client_id = params.get(key, "")
        if client_id and not valid_client_id(client_id):
            raise Unauthorized("the client_id is not a valid client id")
    for key, value in params.items():
        # Introspection answers any string it cannot verify {"active": false} (RFC 7662), however long.
        if key != "token":
            check_field(key, value)
    return params


async def read_body(request: web.Request) -> bytes:
    """The raw body (empty when there is none); ``PayloadTooLarge`` beyond the app's limit."""
    if not request.body_exists:
        return b""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            "the request body is larger than {client_max_size} bytes", client_max_size=request.client_max_size
        ) from None


def _json_fields(body: bytes, content_type: str) -> dict[str, str]:
    """String fields of a JSON object body. A JSON content type must carry valid JSON; any other content type is
    tried as JSON (Casdoor reads the raw body whatever its type) and refused when it is not."""
    declared_json = content_type == "application/json" or content_type.endswith("+json")
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        if declared_json:
            raise BadRequest("the body is not valid JSON: {detail}", detail=str(exc)) from None
        shown = content_type or "no Content-Type"
        raise UnsupportedMediaType(
            "cannot read a body sent with {shown}; send application/x-www-form-urlencoded or application/json",
            shown=shown,
        ) from None
    if not isinstance(doc, dict):
        raise BadRequest("the JSON body must be an object")
    fields: dict[str, str] = {}
    for key in JSON_FIELDS:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest("the JSON field {key!r} must be a string", key=key)
        fields[key] = value
    return fields


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    return basic_credentials(request.headers.get("Authorization", ""))
