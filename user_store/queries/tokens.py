"""Token rows: one per access/refresh pair, holding their hashes, never the tokens."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import asyncpg

from user_store.db import Conn
from user_store.queries import columns, translate
from user_store.queries.applications import PROVIDER_TYPE
from user_store.signing_keys.signer import Subject


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token row: one access/refresh pair, by their hashes, in a family."""

    id: uuid.UUID
    family_id: uuid.UUID
    application_id: Any
    user_id: Any
    access_hash: bytes
    refresh_hash: bytes
    scope: str
    session_key: str
    expires_at: datetime
    refresh_expires_at: datetime
    session_key_sealed: bytes | None


async def insert_tokens(conn: Conn, tokens: Sequence[TokenRow]) -> None:
    """Insert ``tokens`` with one statement, however many there are (a batch of logins' rows)."""
    with translate("token"):
        await conn.execute(
            """
            INSERT INTO tokens (id, family_id, application_id, user_id, access_hash, refresh_hash, scope,
                                session_key, expires_at, refresh_expires_at, session_key_sealed)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bytea[], $6::bytea[], $7::text[],
                                 $8::text[], $9::timestamptz[], $10::timestamptz[], $11::bytea[])
            """,
            *columns(tokens, 11),
        )


TokenColumn = Literal["access_hash", "refresh_hash"]
_ROW = """
    SELECT t.id, t.family_id, t.application_id, t.user_id, t.scope, t.expires_at, t.refresh_expires_at, t.revoked_at,
           t.created_at, u.name AS user_name, u.is_forbidden, u.is_deleted, a.client_id, o.name AS organization
    FROM tokens t
    JOIN users u ON u.id = t.user_id
    JOIN applications a ON a.id = t.application_id
    JOIN organizations o ON o.id = u.organization_id
    WHERE t.{column} = $1
"""
_ROW_BY_HASH: dict[TokenColumn, str] = {
    column: _ROW.format(column=column) for column in ("access_hash", "refresh_hash")
}


async def token_row(conn: Conn, column: TokenColumn, token_hash: bytes) -> asyncpg.Record | None:
    """The row whose ``column`` is ``token_hash``, with its user's state and name, its application and organization."""
    with translate("token"):
        return await conn.fetchrow(_ROW_BY_HASH[column], token_hash)


async def token_by_hash(conn: Conn, token_hash: bytes) -> asyncpg.Record | None:
    """The row holding ``token_hash`` in either column, whatever its state; ``is_access`` says which."""
    with translate("token"):
        return await conn.fetchrow(
            """
            SELECT t.id, t.family_id, t.access_hash = $1 AS is_access, a.client_id, t.user_id, a.name AS application,
                   o.name AS organization
            FROM tokens t JOIN applications a ON a.id = t.application_id
            JOIN organizations o ON o.id = a.organization_id
            WHERE t.access_hash = $1 OR t.refresh_hash = $1
            """,
            token_hash,
        )


async def token_owner(conn: Conn, token_id: uuid.UUID) -> asyncpg.Record:
    """``organization, name, id`` of the user of a token row that exists."""
    with translate("token"):
        row = await conn.fetchrow(
            """
            SELECT o.name AS organization, u.name, u.id FROM tokens t JOIN users u ON u.id = t.user_id
            JOIN organizations o ON o.id = u.organization_id WHERE t.id = $1
            """,
            token_id,
        )
    return cast(asyncpg.Record, row)


async def refresh_row(conn: Conn, refresh_hash: bytes) -> asyncpg.Record | None:
    """The row of a refresh token, locked until the transaction ends, with what a rotation needs: the login's
    session_key and scope, its user's profile and state, its application's lifetimes."""
    with translate("token"):
        return await conn.fetchrow(
            """
            SELECT t.id, t.family_id, t.user_id, t.application_id, t.scope, t.session_key, t.session_key_sealed,
                   t.refresh_expires_at,
                   t.revoked_at, t.replaced_by, u.name AS user_name, u.display_name, u.avatar, u.is_forbidden,
                   u.is_deleted, a.client_id, a.expire_in_hours, a.refresh_expire_in_hours, a.signing_alg,
                   o.name AS organization
            FROM tokens t
            JOIN users u ON u.id = t.user_id
            JOIN applications a ON a.id = t.application_id
            JOIN organizations o ON o.id = u.organization_id
            WHERE t.refresh_hash = $1
            FOR UPDATE OF t
            """,
            refresh_hash,
        )


def subject(user: asyncpg.Record | Mapping[str, Any], application: asyncpg.Record) -> Subject:
    """Whom a token pair is for: ``user_id``, ``user_name``, ``display_name`` and ``avatar`` of ``user``, and
    ``organization``, ``client_id``, ``expire_in_hours``, ``refresh_expire_in_hours`` and ``signing_alg`` of
    ``application``. The
    login's user and application rows (``queries.users``, ``queries.logins``, ``queries.applications``) have these
    columns (``user`` may be such a row with its profile as a batch of logins leaves it), and so has ``refresh_row``,
    which serves as both."""
    return Subject(
        user_id=str(user["user_id"]),
        user_name=user["user_name"],
        display_name=user["display_name"],
        avatar=user["avatar"],
        organization=application["organization"],
        client_id=application["client_id"],
        expire_in_hours=application["expire_in_hours"],
        refresh_expire_in_hours=application["refresh_expire_in_hours"],
        signing_alg=application["signing_alg"],
    )


async def set_replaced_by(conn: Conn, token_id: uuid.UUID, replaced_by: uuid.UUID) -> None:
    with translate("token"):
        await conn.execute("UPDATE tokens SET replaced_by = $2 WHERE id = $1", token_id, replaced_by)


RevokeBy = Literal["id", "family_id", "user_id"]
_REVOKE = """
    UPDATE tokens SET revoked_at = now()
    WHERE {column} = $1 AND revoked_at IS NULL
    RETURNING id, greatest(expires_at, refresh_expires_at) AS last_expiry
"""


async def revoke_rows(conn: Conn, by: RevokeBy, value: uuid.UUID | str) -> list[asyncpg.Record]:
    """``id, last_expiry`` of every live row whose ``by`` column is ``value``, now revoked."""
    query = _REVOKE.format(column=by)
    with translate("token"):
        rows = list(await conn.fetch(query, value))
        # Under READ COMMITTED that UPDATE may have waited on a concurrent refresh's row lock without seeing the row
        # the refresh added to the family: later statements take fresh snapshots, so repeat until nothing is left.
        while batch := await conn.fetch(query, value):
            rows.extend(batch)
    return rows


async def delete_expired(conn: Conn, grace_seconds: float, limit: int) -> int:
    """Delete at most ``limit`` rows whose access and refresh tokens both expired over ``grace_seconds`` ago.

    Such a row can answer nothing any more: its tokens fail the expiry check before the row is read, and a replayed
    refresh token of its family is refused as expired whether the row is there or not. Uses ``tokens_last_expiry``.
    """
    with translate("token"):
        status = await conn.execute(
            """
            DELETE FROM tokens WHERE id IN (
                SELECT id FROM tokens
                WHERE greatest(expires_at, refresh_expires_at) < now() - make_interval(secs => $1)
                LIMIT $2
            )
            """,
            grace_seconds,
            limit,
        )
    return int(status.split()[-1])


async def token_session_key(conn: Conn, token_id: str) -> asyncpg.Record | None:
    """A live token's login: its family (the sealed session_key's row), both session_key columns, and the AppIDs of
    its application's mini-program providers (``appids``), which a watermark may name."""
    with translate("token"):
        return await conn.fetchrow(
            """
            SELECT t.family_id, t.session_key, t.session_key_sealed,
                   coalesce((SELECT array_agg(p.appid) FROM application_providers ap
                             JOIN providers p ON p.id = ap.provider_id
                             WHERE ap.application_id = t.application_id AND p.type = $2), '{}') AS appids
            FROM tokens t
            WHERE t.id = $1::uuid
            """,
            token_id,
            PROVIDER_TYPE,
        )
