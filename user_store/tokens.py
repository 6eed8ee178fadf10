"""Whether a minidoor token is live, and revoking tokens: the one place both are decided.

A token is live when all of these hold:

- it is a JWT signed by a live key of the ``Signer`` (current, pending or superseded; not retired nor expired) with
  that key's own algorithm (RS256 or ES256; a header naming the other is refused), with our ``iss``, and
  ``exp``/``nbf`` hold with no leeway (this is the authority);
- its row, found by the token's sha256 in the column its ``tokenType`` claim names, exists, has its ``jti`` and
  ``sub``, is neither revoked nor past the row's expiry;
- its user is neither forbidden nor deleted.

For bearer authentication (the account APIs) and the refresh grant (``user_store.db``)::

    async with connection(pool) as conn:                            # a read: no transaction needed
        info = await inspect_token(conn, signer, token, "access")  # None: answer invalid_token
    ...
    async with transaction(pool) as conn:
        await revoke_token(conn, revocations, info.token_id)        # logout: marks the row, tells every verifier

``revoke_family`` (a refresh chain) and ``revoke_user_tokens`` (a user forbidden, deleted or logged out everywhere)
work alike. Each broadcasts before the caller's transaction commits (``Revocations.announce`` says why), and
revoking a row kills both of its tokens: they share the row's id as ``jti``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from shared import jwtcheck
from shared.errors import BadRequest, InvalidToken, Unauthorized
from shared.messages import RevokedToken
from user_store.db import Conn
from user_store.queries.applications import application_credentials
from user_store.queries.tokens import (
    RevokeBy,
    TokenColumn,
    TokenRow,
    insert_tokens,
    revoke_rows,
    token_by_hash,
    token_row,
)
from user_store.revocations import Revocations
from user_store.signing_keys.signer import MintedTokens, Signer, Subject, is_opaque_refresh_token, token_hash

TokenKind = Literal["access", "refresh"]

#: Values of the JWT ``tokenType`` claim and of RFC 7662/7009 ``token_type_hint`` (Casdoor accepts both spellings).
_KIND_BY_CLAIM: dict[object, TokenKind] = {"access-token": "access", "refresh-token": "refresh"}
_KIND_BY_HINT: dict[str, TokenKind] = {
    "access_token": "access",
    "access-token": "access",
    "refresh_token": "refresh",
    "refresh-token": "refresh",
}
_UNKNOWN_SECRET_HASH = hashlib.sha256(b"no such application").digest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A live token: its row and its verified claims."""

    #: The token row's id, the ``jti`` of both its tokens.
    token_id: str
    family_id: str
    kind: TokenKind
    user_id: str
    user_name: str
    organization: str
    client_id: str
    application_id: str
    scope: str
    issued_at: int
    not_before: int
    expires_at: int
    issuer: str
    audience: tuple[str, ...]
    kid: str
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FoundToken:
    """A token row found by hash alone (no signature check): enough to revoke it."""

    token_id: str
    family_id: str
    kind: TokenKind
    client_id: str
    #: For the audit log: whose token it is, in which organization and application.
    user_id: str = ""
    organization: str = ""
    application: str = ""


def kind_from_hint(hint: str) -> TokenKind | None:
    """The kind a ``token_type_hint`` names; None for no hint or one we do not know (RFC 7662 lets us ignore it)."""
    return _KIND_BY_HINT.get(hint)


def verify_jwt(signer: Signer, token: str) -> tuple[dict[str, Any], str] | None:
    """The claims and kid of ``token`` if one of the signer's live keys signed it, with the key's algorithm, and
    ``iss``/``exp``/``nbf`` hold."""
    try:
        parsed = jwtcheck.parse(token)
        key = signer.key(parsed.kid)
        if key is None:
            return None
        claims = jwtcheck.check(
            parsed, key.public_key, algorithms=(key.algorithm,), issuer=signer.issuer, audience=None
        )
    except InvalidToken:
        return None
    return claims, key.kid


_COLUMN: dict[TokenKind, TokenColumn] = {"access": "access_hash", "refresh": "refresh_hash"}


async def inspect_token(
    conn: Conn, signer: Signer, token: str, expected: TokenKind | None = None, *, client_id: str | None = None
) -> TokenInfo | None:
    """The live token ``token`` is, or None (expired, revoked, forged, malformed, of a forbidden or deleted user).

    ``expected`` refuses the other kind (a refresh token where an access token is expected is not live);
    ``client_id`` refuses tokens issued to another application. The forged and malformed cases cost no query.
    """
    if is_opaque_refresh_token(token):
        if expected not in (None, "refresh"):
            return None
        row = await _live_row(conn, "refresh", token, client_id)
        return None if row is None else _opaque_refresh_info(signer, row)
    verified = verify_jwt(signer, token)
    if verified is None:
        return None
    claims, kid = verified
    kind = _KIND_BY_CLAIM.get(claims.get("tokenType"))
    if kind is None or (expected is not None and kind != expected):
        return None
    row = await _live_row(conn, kind, token, client_id)
    if row is None or claims["jti"] != str(row["id"]) or claims["sub"] != str(row["user_id"]):
        return None
    audience = claims["aud"]
    return TokenInfo(
        token_id=str(row["id"]),
        family_id=str(row["family_id"]),
        kind=kind,
        user_id=str(row["user_id"]),
        user_name=row["user_name"],
        organization=row["organization"],
        client_id=row["client_id"],
        application_id=str(row["application_id"]),
        scope=row["scope"],
        issued_at=int(claims["iat"]),
        not_before=int(claims["nbf"]),
        expires_at=int(claims["exp"]),
        issuer=claims["iss"],
        audience=(audience,) if isinstance(audience, str) else tuple(audience),
        kid=kid,
        claims=claims,
    )


async def _live_row(conn: Conn, kind: TokenKind, token: str, client_id: str | None) -> asyncpg.Record | None:
    """The row of ``token`` as a ``kind`` token if it is live: not revoked, not expired, its user allowed, issued to
    ``client_id`` when that is given."""
    row = await token_row(conn, _COLUMN[kind], token_hash(token))
    if row is None or row["revoked_at"] is not None or row["is_forbidden"] or row["is_deleted"]:
        return None
    if client_id is not None and row["client_id"] != client_id:
        return None
    row_expiry: datetime = row["expires_at"] if kind == "access" else row["refresh_expires_at"]
    return None if row_expiry <= datetime.now(UTC) else row


def _opaque_refresh_info(signer: Signer, row: asyncpg.Record) -> TokenInfo:
    """What an opaque refresh token is, read from its row: it has no claims of its own."""
    issued_at = int(row["created_at"].timestamp())
    return TokenInfo(
        token_id=str(row["id"]),
        family_id=str(row["family_id"]),
        kind="refresh",
        user_id=str(row["user_id"]),
        user_name=row["user_name"],
        organization=row["organization"],
        client_id=row["client_id"],
        application_id=str(row["application_id"]),
        scope=row["scope"],
        issued_at=issued_at,
        not_before=issued_at,
        expires_at=int(row["refresh_expires_at"].timestamp()),
        issuer=signer.issuer,
        audience=(row["client_id"],),
        kid="",
        claims={},
    )


async def find_token(conn: Conn, token: str) -> FoundToken | None:
    """The row of ``token`` by its hash in either column, whatever its state: what RFC 7009 revocation needs."""
    if not token or len(token) > jwtcheck.MAX_TOKEN_CHARS:
        return None
    row = await token_by_hash(conn, token_hash(token))
    if row is None:
        return None
    return FoundToken(
        token_id=str(row["id"]),
        family_id=str(row["family_id"]),
        kind="access" if row["is_access"] else "refresh",
        client_id=row["client_id"],
        user_id=str(row["user_id"]),
        organization=row["organization"],
        application=row["application"],
    )


async def authenticate_client(conn: Conn, client_id: str, client_secret: str) -> asyncpg.Record:
    """The application (``id``, ``client_id``, ``name``) these credentials belong to.

    ``BadRequest`` (invalid_request) when either is missing; ``Unauthorized`` (invalid_client) with Casdoor's
    message when the application is unknown or the secret wrong, in constant time either way.
    """
    if not client_id or not client_secret:
        raise BadRequest("client authentication is required: HTTP Basic, or client_id and client_secret")
    row = await application_credentials(conn, client_id)
    given = hashlib.sha256(client_secret.encode("utf-8", "surrogateescape")).digest()
    stored = row["client_secret_hash"] if row is not None else _UNKNOWN_SECRET_HASH
    if not hmac.compare_digest(given, stored) or row is None:
        raise Unauthorized("Invalid application or wrong clientSecret")
    return row


async def _revoke(conn: Conn, revocations: Revocations, by: RevokeBy, value: uuid.UUID | str) -> list[RevokedToken]:
    rows = await revoke_rows(conn, by, value)
    revoked = [RevokedToken(jti=str(row["id"]), exp=int(row["last_expiry"].timestamp())) for row in rows]
    await revocations.announce(revoked)
    return revoked


async def revoke_token(conn: Conn, revocations: Revocations, token_id: uuid.UUID | str) -> list[RevokedToken]:
    """Revoke one token row (its access and its refresh token) and broadcast it; returns what was newly revoked."""
    return await _revoke(conn, revocations, "id", token_id)


async def revoke_family(conn: Conn, revocations: Revocations, family_id: uuid.UUID | str) -> list[RevokedToken]:
    """Revoke every row of a refresh chain and broadcast them."""
    return await _revoke(conn, revocations, "family_id", family_id)


async def revoke_user_tokens(conn: Conn, revocations: Revocations, user_id: uuid.UUID | str) -> list[RevokedToken]:
    """Revoke every token of a user and broadcast them."""
    return await _revoke(conn, revocations, "user_id", user_id)


def mint_row(
    signer: Signer,
    subject: Subject,
    *,
    application_id: uuid.UUID,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    session_key: str,
    session_key_sealed: bytes | None = None,
) -> tuple[MintedTokens, TokenRow]:
    """An access/refresh pair for ``subject`` in ``family_id``, and the row that stores it (hashes only)."""
    token_id = uuid.uuid4()
    minted = signer.mint(subject, token_id=str(token_id), now=int(time.time()))
    row = TokenRow(
        id=token_id,
        family_id=family_id,
        application_id=application_id,
        user_id=user_id,
        access_hash=minted.access_hash,
        refresh_hash=minted.refresh_hash,
        scope=minted.response.scope,
        session_key=session_key,
        expires_at=datetime.fromtimestamp(minted.expires_at, UTC),
        refresh_expires_at=datetime.fromtimestamp(minted.refresh_expires_at, UTC),
        session_key_sealed=session_key_sealed,
    )
    return minted, row


async def issue_tokens(
    conn: Conn,
    signer: Signer,
    subject: Subject,
    *,
    application_id: uuid.UUID,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    session_key: str,
    session_key_sealed: bytes | None = None,
) -> MintedTokens:
    """Mint an access/refresh pair for ``subject`` and store its row (hashes only) in ``family_id``."""
    minted, row = mint_row(
        signer,
        subject,
        application_id=application_id,
        user_id=user_id,
        family_id=family_id,
        session_key=session_key,
        session_key_sealed=session_key_sealed,
    )
    await insert_tokens(conn, [row])
    return minted
