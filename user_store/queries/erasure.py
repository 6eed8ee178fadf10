"""A user's data as a whole: erasing it (account deletion) and reading it out (data export)."""

from __future__ import annotations

import uuid

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

#: The prefix of an erased user's name: outside the user-name alphabet, so never a live user's name.
ERASED_PREFIX = "erased:"


async def delete_identities(conn: Conn, user_id: uuid.UUID) -> int:
    """Delete the user's WeChat identities (openid, unionid, sealed session_key); how many there were."""
    with translate("wechat identity"):
        status = await conn.execute("DELETE FROM wechat_identities WHERE user_id = $1", user_id)
    return int(status.split()[-1])


async def blank_token_session_keys(conn: Conn, user_id: uuid.UUID) -> None:
    """Drop the session_key, clear or sealed, from every token row of the user (the rows stay, revoked)."""
    with translate("token"):
        await conn.execute(
            """
            UPDATE tokens SET session_key = '', session_key_sealed = NULL
            WHERE user_id = $1 AND (session_key <> '' OR session_key_sealed IS NOT NULL)
            """,
            user_id,
        )


async def delete_password_slots(conn: Conn, user_id: uuid.UUID) -> None:
    with translate("password change slot"):
        await conn.execute("DELETE FROM password_change_slots WHERE user_id = $1", user_id)


async def tombstone_user(conn: Conn, user_id: uuid.UUID) -> None:
    """Keep only the row's id, organization, type, sign-up application and times; mark it deleted and erased."""
    with translate("user"):
        await conn.execute(
            f"""
            UPDATE users
            SET name = '{ERASED_PREFIX}' || id::text, display_name = '', avatar = '', email = '', phone = '',
                country_code = '', password_hash = NULL, is_admin = false, is_deleted = true, properties = '{{}}',
                erased_at = now(), updated_at = now()
            WHERE id = $1
            """,
            user_id,
        )


async def identities(conn: Conn, user_id: uuid.UUID) -> list[asyncpg.Record]:
    """The user's WeChat identities, without their session_keys."""
    with translate("wechat identity"):
        return list(
            await conn.fetch(
                """
                SELECT appid, openid, coalesce(unionid, '') AS unionid, created_at, updated_at
                FROM wechat_identities WHERE user_id = $1 ORDER BY created_at
                """,
                user_id,
            )
        )


async def linked_applications(conn: Conn, user_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every application the user signed in to, with its first and last sign-in and how many logins are live."""
    with translate("token"):
        return list(
            await conn.fetch(
                """
                SELECT a.name, a.client_id, min(t.created_at) AS first_sign_in, max(t.created_at) AS last_sign_in,
                       count(*) FILTER (WHERE t.revoked_at IS NULL AND t.refresh_expires_at > now()
                                        AND t.replaced_by IS NULL) AS live_logins
                FROM tokens t JOIN applications a ON a.id = t.application_id
                WHERE t.user_id = $1
                GROUP BY a.name, a.client_id ORDER BY min(t.created_at)
                """,
                user_id,
            )
        )


async def recent_events(conn: Conn, user_id: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    """The audit log's latest ``limit`` events about the user (its sign-ins first among them), newest first."""
    with translate("audit event"):
        return list(
            await conn.fetch(
                """
                SELECT at, action, outcome, application, client_id, host(client_ip) AS client_ip, details
                FROM audit_events WHERE target_user_id = $1 ORDER BY at DESC, id DESC LIMIT $2
                """,
                user_id,
                limit,
            )
        )


async def forget_event_addresses(conn: Conn, user_id: uuid.UUID) -> None:
    """The audit log keeps what happened to an erased user, not from where: its events lose their client IP."""
    with translate("audit event"):
        await conn.execute(
            "UPDATE audit_events SET client_ip = NULL WHERE target_user_id = $1 AND client_ip IS NOT NULL", user_id
        )
