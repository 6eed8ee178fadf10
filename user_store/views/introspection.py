"""RFC 7662 introspection (``POST /internal/tokens/introspect``) and RFC 7009 revocation
(``POST /internal/tokens/revoke``), behind the gateway's routes of the same name."""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from shared.errors import BadRequest
from shared.guard import log_id
from shared.messages import Introspection, TokenRequest
from user_store.appkeys import AUDIT, PG_POOL, REVOCATIONS, SIGNER
from user_store.db import connection, transaction
from user_store.http import json_response, read_json
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
    """RFC 7662's answer for a live token; ``username`` is the user's name, as Casdoor's JWT ``name``."""
    return Introspection(
        active=True,
        scope=info.scope,
        client_id=info.client_id,
        username=info.user_name,
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


async def introspect(request: web.Request) -> web.Response:
    """Active only for a live token issued to the calling application, of the kind ``token_type_hint`` names."""
    req = await read_json(request, _request_decoder)
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
