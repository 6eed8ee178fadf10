"""The WeChat login's statements for a whole batch of logins: each takes every login's values as arrays
(``unnest``), so a batch costs the same few statements whatever its size, and the SQL text never changes (asyncpg
prepares each statement once per connection)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from user_store.db import Conn
from user_store.queries import columns, translate
from user_store.queries.applications import PROVIDER_TYPE

#: The columns of a user the login reads, named as ``queries.tokens.subject`` reads them.
_LOGIN_USER = "u.id AS user_id, u.name AS user_name, u.display_name, u.avatar, u.is_forbidden, u.is_deleted"
_IDENTITY = "w.organization_id, w.appid, w.openid, w.unionid, w.created_at AS identity_created_at"


async def login_applications(conn: Conn, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], asyncpg.Record]:
    """The application behind each ``(client_id, appid)`` that has one, and whether one of its mini-program providers
    has that ``appid`` (``has_appid``), by pair."""
    with translate("application"):
        rows = await conn.fetch(
            """
            SELECT k.client_id AS login_client_id, k.appid AS login_appid, a.id, a.name, a.client_id,
                   a.organization_id, o.name AS organization, a.enable_sign_up, a.preprovisioned_only,
                   a.expire_in_hours, a.refresh_expire_in_hours, a.signing_alg,
                   EXISTS (SELECT 1 FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                           WHERE ap.application_id = a.id AND p.type = $3 AND p.appid = k.appid) AS has_appid
            FROM unnest($1::text[], $2::text[]) AS k (client_id, appid)
            JOIN applications a ON a.client_id = k.client_id
            JOIN organizations o ON o.id = a.organization_id
            """,
            [client_id for client_id, _ in pairs],
            [appid for _, appid in pairs],
            PROVIDER_TYPE,
        )
    return {(row["login_client_id"], row["login_appid"]): row for row in rows}


async def lock_keys(conn: Conn, keys: Sequence[int]) -> None:
    """Transaction-level advisory locks on ``keys``, taken in ascending order by one statement (every taker goes in
    that order, so two batches sharing keys queue instead of deadlocking)."""
    with translate("lock"):
        # The ORDER BY in a subquery is kept (a sorted subquery is not flattened): the locks are taken in its order.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT k FROM unnest($1::bigint[]) AS k ORDER BY k) AS s",
            list(keys),
        )


# Both lookups read the user FOR KEY SHARE, as queries.users does for one login (its comment says why).


async def find_users(
    conn: Conn, openids: Sequence[tuple[Any, str, str]], unionids: Sequence[tuple[Any, str]]
) -> tuple[dict[tuple[Any, str, str], asyncpg.Record], dict[tuple[Any, str], asyncpg.Record]]:
    """The user of each WeChat identity ``(organization_id, appid, openid)`` that exists, and for each
    ``(organization_id, unionid)`` the user of the oldest identity having it; each row with that identity's
    ``unionid`` and ``identity_created_at``."""
    with translate("user"):
        rows = await conn.fetch(
            f"""
            SELECT 'openid' AS found_by, x.*
            FROM unnest($1::uuid[], $2::text[], $3::text[]) AS k (organization_id, appid, openid)
            CROSS JOIN LATERAL (
                SELECT {_IDENTITY}, {_LOGIN_USER}
                FROM wechat_identities w JOIN users u ON u.id = w.user_id
                WHERE w.organization_id = k.organization_id AND w.appid = k.appid AND w.openid = k.openid
                FOR KEY SHARE OF u
            ) AS x
            UNION ALL
            SELECT 'unionid', x.*
            FROM unnest($4::uuid[], $5::text[]) AS k (organization_id, unionid)
            CROSS JOIN LATERAL (
                SELECT {_IDENTITY}, {_LOGIN_USER}
                FROM wechat_identities w JOIN users u ON u.id = w.user_id
                WHERE w.organization_id = k.organization_id AND w.unionid = k.unionid
                ORDER BY w.created_at LIMIT 1
                FOR KEY SHARE OF u
            ) AS x
            """,
            [org for org, _, _ in openids],
            [appid for _, appid, _ in openids],
            [openid for _, _, openid in openids],
            [org for org, _ in unionids],
            [unionid for _, unionid in unionids],
        )
    by_openid = {(r["organization_id"], r["appid"], r["openid"]): r for r in rows if r["found_by"] == "openid"}
    by_unionid = {(r["organization_id"], r["unionid"]): r for r in rows if r["found_by"] == "unionid"}
    return by_openid, by_unionid


@dataclass(frozen=True, slots=True)
class NewUser:
    """A user a login creates, under the id chosen here; ``name`` is this round's candidate."""

    id: uuid.UUID
    organization_id: Any
    name: str
    display_name: str
    avatar: str
    signup_application: str
    openid: str
    unionid: str


async def insert_users(conn: Conn, users: Sequence[NewUser]) -> dict[uuid.UUID, asyncpg.Record]:
    """Insert ``users`` in their order, skipping those whose name is taken in the organization (by another user or an
    earlier one of ``users``); the inserted ones by id.

    Without an avatar a user gets the organization's default one, as Casdoor's AddUser does; ``properties`` holds the
    openid and unionid, as Casdoor's WeChat sign-up writes them.
    """
    with translate("user"):
        rows = await conn.fetch(
            f"""
            INSERT INTO users AS u (id, organization_id, name, display_name, avatar, signup_application, properties)
            SELECT n.id, n.organization_id, n.name, n.display_name, coalesce(nullif(n.avatar, ''), o.default_avatar),
                   n.signup_application, jsonb_build_object('wechatOpenId', n.openid, 'wechatUnionId', n.unionid)
            FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
                 WITH ORDINALITY AS n (id, organization_id, name, display_name, avatar, signup_application, openid,
                                       unionid, position)
            JOIN organizations o ON o.id = n.organization_id
            ORDER BY n.position
            ON CONFLICT (organization_id, name) DO NOTHING
            RETURNING {_LOGIN_USER}
            """,
            *columns(users, 8),
        )
    return {row["user_id"]: row for row in rows}


@dataclass(frozen=True, slots=True)
class IdentityRow:
    """A WeChat identity's row as a batch leaves it: ``session_key`` and ``session_key_sealed`` as
    ``session_keys.session_key_columns`` gives them; ``unionid`` "" for none."""

    organization_id: Any
    user_id: Any
    appid: str
    openid: str
    unionid: str
    session_key: str
    session_key_sealed: bytes | None


async def insert_identities(conn: Conn, identities: Sequence[IdentityRow]) -> None:
    with translate("wechat identity"):
        await conn.execute(
            """
            INSERT INTO wechat_identities (organization_id, user_id, appid, openid, unionid, session_key,
                                           session_key_sealed)
            SELECT organization_id, user_id, appid, openid, nullif(unionid, ''), session_key, session_key_sealed
            FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])
                 AS n (organization_id, user_id, appid, openid, unionid, session_key, session_key_sealed)
            """,
            *columns(identities, 7),
        )


async def refresh_identities(conn: Conn, identities: Sequence[IdentityRow]) -> None:
    """Store each identity's latest session_key, and a unionid WeChat gave for the first time (``user_id`` is not
    written: an identity keeps its user). One row per identity."""
    with translate("wechat identity"):
        await conn.execute(
            """
            UPDATE wechat_identities AS w
            SET session_key = n.session_key, unionid = coalesce(w.unionid, nullif(n.unionid, '')),
                session_key_sealed = n.session_key_sealed, updated_at = now()
            FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])
                 AS n (organization_id, user_id, appid, openid, unionid, session_key, session_key_sealed)
            WHERE w.organization_id = n.organization_id AND w.appid = n.appid AND w.openid = n.openid
            """,
            *columns(identities, 7),
        )


async def update_profiles(conn: Conn, profiles: Sequence[tuple[Any, str, str]]) -> None:
    """Set the non-empty ones of ``display_name`` and ``avatar`` of each ``(user_id, display_name, avatar)``, one row
    per user."""
    with translate("user"):
        await conn.execute(
            """
            UPDATE users AS u
            SET display_name = coalesce(nullif(n.display_name, ''), u.display_name),
                avatar = coalesce(nullif(n.avatar, ''), u.avatar),
                updated_at = now()
            FROM unnest($1::uuid[], $2::text[], $3::text[]) AS n (id, display_name, avatar)
            WHERE u.id = n.id
            """,
            *columns(profiles, 3),
        )
