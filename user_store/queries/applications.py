"""Organizations, applications and their mini-program providers: the rows behind ``client_id``."""

from __future__ import annotations

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

PROVIDER_TYPE = "WeChatMiniProgram"


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


async def login_application(conn: Conn, client_id: str, appid: str) -> asyncpg.Record | None:
    """The application behind ``client_id``, and whether one of its mini-program providers has ``appid``."""
    with translate("application"):
        return await conn.fetchrow(
            """
            SELECT a.id, a.name, a.client_id, a.organization_id, o.name AS organization, a.enable_sign_up,
                   a.expire_in_hours, a.refresh_expire_in_hours,
                   EXISTS (SELECT 1 FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                           WHERE ap.application_id = a.id AND p.type = $3 AND p.appid = $2) AS has_appid
            FROM applications a JOIN organizations o ON o.id = a.organization_id
            WHERE a.client_id = $1
            """,
            client_id,
            appid,
            PROVIDER_TYPE,
        )
