"""RFC 7662 introspection (``POST /internal/tokens/introspect``) and RFC 7009 revocation
(``POST /internal/tokens/revoke``), behind the gateway's routes of the same name.

Introspection is also the one internal route a service on the private network may call itself, with its
application's client credentials and no internal token (``middleware.CLIENT_AUTHENTICATED_PATHS``): as RFC 7662
asks, a form body (``token``, ``token_type_hint``, and ``client_id``/``client_secret`` unless sent as HTTP Basic).
The gateway sends a JSON ``TokenRequest``. Either way the client credentials are required and checked here.
"""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from shared.errors import BadRequest, UnsupportedMediaType
from shared.forms import FORM, basic_credentials, form_fields
from shared.guard import check_field, log_id
from shared.messages import Introspection, TokenRequest
from user_store.appkeys import AUDIT, PG_POOL, REVOCATIONS, SIGNER
from user_store.db import connection, transaction
from user_store.http import json_response, read_body, read_json
from user_store.tokens import (
    TokenInfo,
    authenticate_client,
    find_token,
    inspect_token,
    kind_from_hint,
    revoke_family,
    revoke_token,
)

_request_decoder = msgspec.json.Decoder(TokenRequest)


INACTIVE = Introspection(active=False)


def introspection(info: TokenInfo) -> Introspection:
    """RFC 7662's answer for a live token; ``username`` is the token's ``name`` claim, as Casdoor answers (and as
    the gateway does, from the token alone): the user's name when it was issued."""
    name = info.claims.get("name")
    return Introspection(
        active=True,
        scope=info.scope,
        client_id=info.client_id,
        username=name if isinstance(name, str) else info.user_name,
        token_type="Bearer",
        exp=info.expires_at,
        iat=info.issued_at,
        nbf=info.not_before,
        sub=info.user_id,
        aud=list(info.audience),
        iss=info.issuer,
        jti=info.token_id,
        token_use=info.kind,
    )


async def _introspection_request(request: web.Request) -> TokenRequest:
    """The gateway's JSON ``TokenRequest``, or an RFC 7662 form with the client credentials in it or in HTTP Basic."""
    if request.content_type != FORM:
        if request.content_type != "application/json":
            raise UnsupportedMediaType("the body must be application/x-www-form-urlencoded (RFC 7662) or JSON")
        return await read_json(request, _request_decoder)
    form = dict(form_fields(await read_body(request)))
    for key, value in form.items():
        if key != "token":  # RFC 7662: any string is an answer, {"active": false}
            check_field(key, value)
    client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id and not client_secret:
        client_id, client_secret = basic_credentials(request.headers.get("Authorization", "")) or ("", "")
    if not client_id or not client_secret:
        raise BadRequest("client authentication is required: HTTP Basic, or client_id and client_secret")
    if not form.get("token"):
        raise BadRequest("token is missing")
    return TokenRequest(
        client_id=client_id,
        client_secret=client_secret,
        token=form.get("token", ""),
        token_type_hint=form.get("token_type_hint", ""),
    )


async def introspect(request: web.Request) -> web.Response:
    """Active only for a live token issued to the calling application, of the kind ``token_type_hint`` names."""
    req = await _introspection_request(request)
    structlog.contextvars.bind_contextvars(client_id=log_id(req.client_id))
    async with connection(request.app[PG_POOL]) as conn:
        caller = await authenticate_client(conn, req.client_id, req.client_secret)
        info = await inspect_token(
            conn, request.app[SIGNER], req.token, kind_from_hint(req.token_type_hint), client_id=caller["client_id"]
        )
    structlog.contextvars.bind_contextvars(active=info is not None)
    return json_response(INACTIVE if info is None else introspection(info))


async def revoke(request: web.Request) -> web.Response:
    """RFC 7009: 200 for unknown or dead tokens too. A refresh token takes its whole family with it."""
    req = await read_json(request, _request_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(req.client_id))
    if not req.token:
        raise BadRequest("token is missing")
    async with transaction(request.app[PG_POOL]) as conn:
        caller = await authenticate_client(conn, req.client_id, req.client_secret)
        found = await find_token(conn, req.token)
        if found is not None:
            if found.client_id != caller["client_id"]:
                raise BadRequest("the token was not issued to this client", error="unauthorized_client")
            revocations = request.app[REVOCATIONS]
            if found.kind == "refresh":
                revoked = await revoke_family(conn, revocations, found.family_id)
            else:
                revoked = await revoke_token(conn, revocations, found.token_id)
            structlog.contextvars.bind_contextvars(revoked=len(revoked))
    if found is not None:  # queued once committed
        request.app[AUDIT].record(
            "token_revoked",
            actor_kind="client",
            actor_id=found.client_id,
            target_user_id=found.user_id,
            organization=found.organization,
            application=found.application,
            client_id=found.client_id,
            details={"kind": found.kind, "family_id": found.family_id, "revoked": len(revoked)},
        )
    return json_response({})
