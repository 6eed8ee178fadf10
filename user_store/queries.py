"""Plain SQL helpers. Each takes a connection; asyncpg's exceptions become ``shared.errors`` here and only here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import asyncpg

from shared.errors import BadRequest, Conflict, Unavailable
from user_store.db import CONNECTION_ERRORS, Conn

PROVIDER_TYPE = "WeChatMiniProgram"
_USER = "u.id, u.name, u.display_name, u.avatar, u.is_forbidden, u.is_deleted"


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn a duplicate into ``Conflict`` naming ``what``, unstorable input into ``BadRequest``, a lost database into
    ``Unavailable``."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"{what} already exists") from exc
    except asyncpg.CheckViolationError as exc:
        raise BadRequest(f"invalid {what} ({exc.constraint_name})") from exc
    except asyncpg.DataError as exc:
        # e.g. a NUL byte, which PostgreSQL text cannot hold: the caller's input, not our failure.
        raise BadRequest(f"invalid {what}: {exc.__class__.__name__}") from exc
    except CONNECTION_ERRORS as exc:
        raise Unavailable(f"the database is unavailable ({type(exc).__name__})", retry_after=1) from exc


# --- applications and providers, as the gateway and the workers see them --------------------------------------------


async def application_info(conn: Conn, client_id: str) -> asyncpg.Record | None:
    with translate("application"):
        return await conn.fetchrow(
            """
            SELECT a.client_id, a.name, o.name AS organization, a.enable_sign_up,
                   coalesce((SELECT p.appid FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                             WHERE ap.application_id = a.id AND p.type = $2
                             ORDER BY ap.position LIMIT 1), '') AS miniprogram_appid
            FROM applications a JOIN organizations o ON o.id = a.organization_id
            WHERE a.client_id = $1
            """,
            client_id,
            PROVIDER_TYPE,
        )


async def miniprogram_provider(conn: Conn, client_id: str) -> asyncpg.Record | None:
    """The application's first mini-program provider; ``provider`` is NULL when the application has none. Its
    secret is in ``app_secret`` or ``app_secret_sealed``: read it with ``provider_secrets.open_secret``."""
    with translate("provider"):
        return await conn.fetchrow(
            """
            SELECT a.client_id, p.id AS provider_id, p.name AS provider, p.appid, p.app_secret, p.app_secret_sealed
            FROM applications a
            LEFT JOIN LATERAL (
                SELECT p.id, p.name, p.appid, p.app_secret, p.app_secret_sealed
                FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                WHERE ap.application_id = a.id AND p.type = $2
                ORDER BY ap.position LIMIT 1
            ) p ON true
            WHERE a.client_id = $1
            """,
            client_id,
            PROVIDER_TYPE,
        )


# --- the WeChat login --------------------------------------------------------------------------------------------


async def login_application(conn: Conn, client_id: str, appid: str) -> asyncpg.Record | None:
    """The application behind ``client_id``, and whether one of its mini-program providers has ``appid``."""
    with translate("application"):
        return await conn.fetchrow(
            """
            SELECT a.id, a.name, a.client_id, a.organization_id, o.name AS organization, a.enable_sign_up,
                   a.expire_in_hours, a.refresh_expire_in_hours, a.signing_alg,
                   EXISTS (SELECT 1 FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                           WHERE ap.application_id = a.id AND p.type = $3 AND p.appid = $2) AS has_appid
            FROM applications a JOIN organizations o ON o.id = a.organization_id
            WHERE a.client_id = $1
            """,
            client_id,
            appid,
            PROVIDER_TYPE,
        )


async def lock_keys(conn: Conn, keys: list[int]) -> None:
    """Transaction-level advisory locks, taken one by one in the given order."""
    with translate("lock"):
        for key in keys:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)


async def user_by_openid(conn: Conn, organization_id: Any, appid: str, openid: str) -> asyncpg.Record | None:
    with translate("user"):
        return await conn.fetchrow(
            f"""
            SELECT {_USER}, w.unionid
            FROM wechat_identities w JOIN users u ON u.id = w.user_id
            WHERE w.organization_id = $1 AND w.appid = $2 AND w.openid = $3
            """,
            organization_id,
            appid,
            openid,
        )


async def user_by_unionid(conn: Conn, organization_id: Any, unionid: str) -> asyncpg.Record | None:
    with translate("user"):
        return await conn.fetchrow(
            f"""
            SELECT {_USER}
            FROM wechat_identities w JOIN users u ON u.id = w.user_id
            WHERE w.organization_id = $1 AND w.unionid = $2
            ORDER BY w.created_at LIMIT 1
            """,
            organization_id,
            unionid,
        )


async def insert_user(
    conn: Conn,
    *,
    organization_id: Any,
    name: str,
    display_name: str,
    avatar: str,
    signup_application: str,
    properties: dict[str, str],
) -> asyncpg.Record | None:
    """The new user, or None when ``name`` is taken in the organization.

    Without an avatar the user gets the organization's default one, as Casdoor's AddUser does.
    """
    with translate("user"):
        return await conn.fetchrow(
            f"""
            INSERT INTO users AS u (organization_id, name, display_name, avatar, signup_application, properties)
            SELECT $1, $2, $3, coalesce(nullif($4, ''), o.default_avatar), $5, $6 FROM organizations o WHERE o.id = $1
            ON CONFLICT (organization_id, name) DO NOTHING
            RETURNING {_USER}
            """,
            organization_id,
            name,
            display_name,
            avatar,
            signup_application,
            properties,
        )


async def update_user_profile(conn: Conn, user_id: Any, display_name: str, avatar: str) -> asyncpg.Record:
    """Set the non-empty ones of ``display_name`` and ``avatar``."""
    with translate("user"):
        row = await conn.fetchrow(
            f"""
            UPDATE users AS u
            SET display_name = coalesce(nullif($2, ''), display_name),
                avatar = coalesce(nullif($3, ''), avatar),
                updated_at = now()
            WHERE id = $1
            RETURNING {_USER}
            """,
            user_id,
            display_name,
            avatar,
        )
    assert row is not None, "the user was locked by this transaction"
    return row


async def insert_identity(
    conn: Conn,
    *,
    organization_id: Any,
    user_id: Any,
    appid: str,
    openid: str,
    unionid: str,
    session_key: str,
    session_key_sealed: bytes | None = None,
) -> None:
    with translate("wechat identity"):
        await conn.execute(
            """
            INSERT INTO wechat_identities (organization_id, user_id, appid, openid, unionid, session_key,
                                           session_key_sealed)
            VALUES ($1, $2, $3, $4, nullif($5, ''), $6, $7)
            """,
            organization_id,
            user_id,
            appid,
            openid,
            unionid,
            session_key,
            session_key_sealed,
        )


async def refresh_identity(
    conn: Conn,
    *,
    organization_id: Any,
    appid: str,
    openid: str,
    unionid: str,
    session_key: str,
    session_key_sealed: bytes | None = None,
) -> None:
    """Store the latest session_key, and a unionid WeChat gave for the first time."""
    with translate("wechat identity"):
        await conn.execute(
            """
            UPDATE wechat_identities
            SET session_key = $4, unionid = coalesce(unionid, nullif($5, '')), session_key_sealed = $6,
                updated_at = now()
            WHERE organization_id = $1 AND appid = $2 AND openid = $3
            """,
            organization_id,
            appid,
            openid,
            session_key,
            unionid,
            session_key_sealed,
        )


async def insert_token(
    conn: Conn,
    *,
    token_id: uuid.UUID,
    family_id: uuid.UUID,
    application_id: Any,
    user_id: Any,
    access_hash: bytes,
    refresh_hash: bytes,
    scope: str,
    session_key: str,
    expires_at: datetime,
    refresh_expires_at: datetime,
    session_key_sealed: bytes | None = None,
) -> None:
    with translate("token"):
        await conn.execute(
            """
            INSERT INTO tokens (id, family_id, application_id, user_id, access_hash, refresh_hash, scope,
                                session_key, expires_at, refresh_expires_at, session_key_sealed)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            """,
            token_id,
            family_id,
            application_id,
            user_id,
            access_hash,
            refresh_hash,
            scope,
            session_key,
            expires_at,
            refresh_expires_at,
            session_key_sealed,
        )
