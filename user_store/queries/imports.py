"""What ``user_store.casdoor_import`` reads and writes beyond the admin's own statements: Casdoor's objects as they
are, ids and times included."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from user_store.db import Conn
from user_store.queries import translate


async def set_default_avatar(conn: Conn, organization: str, avatar: str) -> None:
    with translate("organization"):
        await conn.execute("UPDATE organizations SET default_avatar = $2 WHERE name = $1", organization, avatar)


async def client_secret_hash(conn: Conn, application: str) -> bytes:
    with translate("application"):
        return bytes(await conn.fetchval("SELECT client_secret_hash FROM applications WHERE name = $1", application))


async def set_refresh_expiry(conn: Conn, application: str, hours: float) -> None:
    with translate("application"):
        await conn.execute("UPDATE applications SET refresh_expire_in_hours = $2 WHERE name = $1", application, hours)


async def signing_key_exists(conn: Conn, kid: str) -> bool:
    with translate("signing key"):
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM signing_keys WHERE kid = $1)", kid))


async def user_by_id(conn: Conn, user_id: uuid.UUID) -> asyncpg.Record | None:
    with translate("user"):
        return await conn.fetchrow("SELECT id, organization_id, name FROM users WHERE id = $1", user_id)


async def insert_user(
    conn: Conn,
    *,
    user_id: uuid.UUID,
    organization_id: Any,
    name: str,
    display_name: str,
    avatar: str,
    email: str,
    phone: str,
    country_code: str,
    type: str,
    signup_application: str,
    is_admin: bool,
    is_forbidden: bool,
    is_deleted: bool,
    properties: dict[str, str],
    created_at: datetime,
) -> None:
    """A user with Casdoor's id; ``Conflict`` naming the taken name, email or phone."""
    with translate("user with that name, email or phone"):
        await conn.execute(
            """
            INSERT INTO users (id, organization_id, name, display_name, avatar, email, phone, country_code, type,
                               signup_application, is_admin, is_forbidden, is_deleted, properties, created_at,
                               updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::text::jsonb, $15, $15)
            """,
            user_id,
            organization_id,
            name,
            display_name,
            avatar,
            email,
            phone,
            country_code,
            type,
            signup_application,
            is_admin,
            is_forbidden,
            is_deleted,
            # As text: the admin CLI's connection has no jsonb codec, the pool's has one.
            msgspec.json.encode(properties).decode(),
            created_at,
        )


async def insert_identity(
    conn: Conn, organization_id: Any, user_id: uuid.UUID, appid: str, openid: str, unionid: str
) -> None:
    """The user's WeChat identity without a session_key (Casdoor keeps none): the next login stores one."""
    with translate("wechat identity with that openid"):
        await conn.execute(
            """
            INSERT INTO wechat_identities (organization_id, user_id, appid, openid, unionid, session_key)
            VALUES ($1, $2, $3, $4, nullif($5, ''), '')
            """,
            organization_id,
            user_id,
            appid,
            openid,
            unionid,
        )


async def application_appid(conn: Conn, application: str) -> str:
    """The AppID of the application's first mini-program provider, or ""."""
    with translate("application"):
        appid = await conn.fetchval(
            """
            SELECT p.appid FROM applications a JOIN application_providers ap ON ap.application_id = a.id
            JOIN providers p ON p.id = ap.provider_id
            WHERE a.name = $1 AND p.type = 'WeChatMiniProgram' ORDER BY ap.position LIMIT 1
            """,
            application,
        )
    return str(appid or "")


async def organization_appids(conn: Conn, organization_id: Any) -> list[str]:
    """The distinct AppIDs of the organization's applications' mini-program providers."""
    with translate("application"):
        rows = await conn.fetch(
            """
            SELECT DISTINCT p.appid FROM applications a JOIN application_providers ap ON ap.application_id = a.id
            JOIN providers p ON p.id = ap.provider_id
            WHERE a.organization_id = $1 AND p.type = 'WeChatMiniProgram' ORDER BY p.appid
            """,
            organization_id,
        )
    return [row["appid"] for row in rows]
