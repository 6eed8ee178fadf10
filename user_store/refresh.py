"""The refresh_token grant, with rotation (logout, which revokes a whole family, is ``user_store/logout.py``).

Rotation: a refresh mints a new token pair in the same family (the login's chain) that keeps the login's WeChat
``session_key`` and scope; the old row is revoked at once (its access token too, as Casdoor deletes it) and marked
``replaced_by``. Each refresh token therefore works once. Presenting a replaced one again means two parties hold it
(the client and a thief, or a client replaying after a crash): the whole family is revoked, and both must log in
again (RFC 6819 §5.2.2.3, OAuth 2.0 Security BCP §4.14).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from shared.errors import BadRequest, InvalidGrant, MinidoorError
from shared.messages import RefreshRequest, RevokedToken, TokenResponse
from user_store.audit import AuditWriter
from user_store.db import Conn, Pool, transaction
from user_store.queries.tokens import refresh_row, set_replaced_by
from user_store.queries.tokens import subject as token_subject
from user_store.revocations import Revocations
from user_store.signing_keys.signer import Signer, is_opaque_refresh_token, token_hash
from user_store.tokens import (
    authenticate_client,
    issue_tokens,
    revoke_family,
    revoke_token,
    verify_jwt,
)

log = structlog.get_logger()

#: A reuse this soon after the rotation is a concurrent refresh by the same client, not a replay.
_CONCURRENT_REFRESH_GRACE = timedelta(seconds=5)


async def refresh_tokens(
    pool: Pool, signer: Signer, revocations: Revocations, req: RefreshRequest, audit: AuditWriter | None = None
) -> TokenResponse:
    """New tokens for a live refresh token of ``req.client_id``; ``InvalidGrant`` (400) for any other token,
    ``Unauthorized`` (401) for a client secret that is sent and wrong. A rotation and a replay are audited."""
    if not req.refresh_token:
        raise BadRequest("refresh_token is missing")
    claims = _legacy_claims(signer, req.refresh_token)
    replayed: str | None = None
    revoked: list[RevokedToken] = []
    response: TokenResponse | None = None
    async with transaction(pool) as conn:
        if req.client_secret:
            await authenticate_client(conn, req.client_id, req.client_secret)
        row = await refresh_row(conn, token_hash(req.refresh_token))
        if row is None or (
            claims is not None and (claims["jti"] != str(row["id"]) or claims["sub"] != str(row["user_id"]))
        ):
            raise InvalidGrant("the refresh token is invalid or revoked")
        if row["client_id"] != req.client_id:
            raise InvalidGrant("the refresh token was issued to another application (client_id)")
        _check_scope(req.scope, row["scope"])
        if row["revoked_at"] is not None:
            if row["replaced_by"] is None:
                raise InvalidGrant("the refresh token is revoked; log in again")
            if datetime.now(UTC) - row["revoked_at"] < _CONCURRENT_REFRESH_GRACE:
                # Two pages of one mini program refreshing at once, not a thief: the winner's pair stays live.
                raise InvalidGrant("the refresh token was just used by another request; use the tokens it received")
            revoked = await revoke_family(conn, revocations, row["family_id"])
            replayed = str(row["family_id"])
            structlog.contextvars.bind_contextvars(refresh_replayed=True, revoked=len(revoked))
        else:
            if row["is_forbidden"] or row["is_deleted"]:
                raise InvalidGrant("the user is forbidden to sign in")
            if row["refresh_expires_at"] <= datetime.now(UTC):
                raise InvalidGrant("the refresh token has expired; log in again")
            response = await _rotate(conn, signer, revocations, row)
    _audit_refresh(audit, row, replayed=response is None, revoked=len(revoked))
    if response is None:
        log.warning("refresh_token_replayed", family_id=replayed)
        raise InvalidGrant("the refresh token was already used; every token of this login is revoked, log in again")
    return response


def _legacy_claims(signer: Signer, token: str) -> dict[str, Any] | None:
    """None for an opaque refresh token; the verified claims of a JWT one, as stores issued before opaque ones (still
    honoured until they expire, so an upgrade signs nobody out); ``InvalidGrant`` for anything else."""
    if is_opaque_refresh_token(token):
        return None
    verified = verify_jwt(signer, token)
    if verified is None:
        raise InvalidGrant("the refresh token is invalid or expired")
    claims, _kid = verified
    if claims.get("tokenType") != "refresh-token":
        raise InvalidGrant("the token is not a refresh token")
    return claims


def _audit_refresh(audit: AuditWriter | None, row: asyncpg.Record, *, replayed: bool, revoked: int) -> None:
    if audit is None:
        return
    details: dict[str, str | int] = {"family_id": str(row["family_id"])}
    if replayed:
        details["revoked"] = revoked
    audit.record(
        "refresh_replayed" if replayed else "token_refreshed",
        outcome="denied" if replayed else "ok",
        actor_kind="user",
        actor_id=str(row["user_id"]),
        target_user_id=str(row["user_id"]),
        organization=row["organization"],
        client_id=row["client_id"],
        details=details,
    )


def _check_scope(requested: str, granted: str) -> None:
    """RFC 6749 §6: a refresh never widens the scope (the new pair carries the login's)."""
    extra = set(requested.split()) - set(granted.split())
    if extra:
        raise MinidoorError(
            "scope {scope!r} was not granted to this login",
            error="invalid_scope",
            status=400,
            scope=" ".join(sorted(extra)),
        )


async def _rotate(conn: Conn, signer: Signer, revocations: Revocations, row: asyncpg.Record) -> TokenResponse:
    await revoke_token(conn, revocations, row["id"])
    subject = token_subject(row, row)
    # The new pair stays in the login's family and keeps its session_key (Casdoor loses it on refresh).
    minted = await issue_tokens(
        conn,
        signer,
        subject,
        application_id=row["application_id"],
        user_id=row["user_id"],
        family_id=row["family_id"],
        session_key=row["session_key"],
        session_key_sealed=row["session_key_sealed"],
    )
    token_id = uuid.UUID(minted.token_id)
    await set_replaced_by(conn, row["id"], token_id)
    structlog.contextvars.bind_contextvars(user_id=subject.user_id, family_id=str(row["family_id"]))
    return minted.response
