"""Users and their WeChat identities."""

from __future__ import annotations

from typing import Any

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

_USER = "u.id, u.name, u.display_name, u.avatar, u.is_forbidden, u.is_deleted"


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
