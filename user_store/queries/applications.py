"""Organizations, applications and their mini-program providers: the rows behind ``client_id``."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

PROVIDER_TYPE = "WeChatMiniProgram"


async def application_info(conn: Conn, client_id: str) -> asyncpg.Record | None:
    with translate("application"):
        return await conn.fetchrow(
            """
            SELECT a.client_id, a.name, o.name AS organization, a.enable_sign_up, a.content_safety,
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
            SELECT a.client_id, a.content_safety, p.id AS provider_id, p.name AS provider, p.appid, p.app_secret,
                   p.app_secret_sealed
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


async def provider_by_appid(conn: Conn, appid: str) -> asyncpg.Record | None:
    """A mini-program provider with ``appid`` (its secret in one of its two columns, as ``miniprogram_provider``)."""
    with translate("provider"):
        return await conn.fetchrow(
            """
            SELECT id, name, app_secret, app_secret_sealed FROM providers
            WHERE appid = $1 AND type = $2 ORDER BY created_at LIMIT 1
            """,
            appid,
            PROVIDER_TYPE,
        )


async def login_application(conn: Conn, client_id: str, appid: str) -> asyncpg.Record | None:
    """The application behind ``client_id``, and whether one of its mini-program providers has ``appid``."""
    with translate("application"):
        return await conn.fetchrow(
            """
            SELECT a.id, a.name, a.client_id, a.organization_id, o.name AS organization, a.enable_sign_up,
                   a.preprovisioned_only, a.expire_in_hours, a.refresh_expire_in_hours, a.signing_alg,
                   EXISTS (SELECT 1 FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                           WHERE ap.application_id = a.id AND p.type = $3 AND p.appid = $2) AS has_appid
            FROM applications a JOIN organizations o ON o.id = a.organization_id
            WHERE a.client_id = $1
            """,
            client_id,
            appid,
            PROVIDER_TYPE,
        )


async def application_credentials(conn: Conn, client_id: str) -> asyncpg.Record | None:
    """``id, client_id, name, client_secret_hash`` of the application behind ``client_id``."""
    with translate("application"):
        return await conn.fetchrow(
            "SELECT id, client_id, name, client_secret_hash FROM applications WHERE client_id = $1", client_id
        )


async def application_organization(conn: Conn, application_id: Any) -> str:
    """The name of the organization of an application that exists."""
    with translate("application"):
        name: str = await conn.fetchval(
            "SELECT o.name FROM applications a JOIN organizations o ON o.id = a.organization_id WHERE a.id = $1",
            application_id,
        )
    return name


async def organization_by_name(conn: Conn, name: str) -> asyncpg.Record | None:
    with translate("organization"):
        return await conn.fetchrow("SELECT * FROM organizations WHERE name = $1", name)


# --- administration: the CLI and the demo seed -------------------------------------------------------------------

_APPLICATIONS = """
    SELECT a.name, o.name AS organization, a.client_id, a.enable_sign_up, a.expire_in_hours,
           a.refresh_expire_in_hours, a.signing_alg, a.preprovisioned_only, a.content_safety, a.created_at,
           coalesce(array_agg(p.name ORDER BY ap.position) FILTER (WHERE p.name IS NOT NULL), '{}') AS providers
    FROM applications a
    JOIN organizations o ON o.id = a.organization_id
    LEFT JOIN application_providers ap ON ap.application_id = a.id
    LEFT JOIN providers p ON p.id = ap.provider_id
"""


async def insert_organization(conn: Conn, name: str, display_name: str) -> asyncpg.Record:
    with translate(f"organization {name!r}"):
        row = await conn.fetchrow(
            "INSERT INTO organizations (name, display_name) VALUES ($1, $2) RETURNING *", name, display_name
        )
    assert row is not None
    return row


async def insert_application(
    conn: Conn,
    *,
    name: str,
    organization: str,
    client_id: str,
    client_secret_hash: bytes,
    enable_sign_up: bool,
    expire_in_hours: float,
    signing_alg: str = "RS256",
) -> bool:
    """Whether the application was added: False when ``organization`` does not exist."""
    with translate(f"application {name!r}"):
        org_id = await conn.fetchval("SELECT id FROM organizations WHERE name = $1", organization)
        if org_id is None:
            return False
        await conn.execute(
            """
            INSERT INTO applications (name, organization_id, client_id, client_secret_hash, enable_sign_up,
                                      expire_in_hours, signing_alg)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            name,
            org_id,
            client_id,
            client_secret_hash,
            enable_sign_up,
            expire_in_hours,
            signing_alg,
        )
    return True


async def application_by_name(conn: Conn, name: str) -> asyncpg.Record | None:
    """The application with its organization's name and its providers' names, in the order the login reads them."""
    with translate("application"):
        return await conn.fetchrow(_APPLICATIONS + " WHERE a.name = $1 GROUP BY a.id, o.name", name)


async def set_signing_alg(conn: Conn, application: str, signing_alg: str) -> bool:
    """Whether ``application`` exists (and now signs with ``signing_alg``)."""
    with translate("application"):
        updated = await conn.fetchval(
            "UPDATE applications SET signing_alg = $2 WHERE name = $1 RETURNING id", application, signing_alg
        )
    return updated is not None


async def set_client_secret_hash(conn: Conn, application: str, client_secret_hash: bytes) -> bool:
    """Whether the application exists (and now has this secret)."""
    with translate("application"):
        updated = await conn.fetchval(
            "UPDATE applications SET client_secret_hash = $2 WHERE name = $1 RETURNING id",
            application,
            client_secret_hash,
        )
    return updated is not None


async def lock_application(conn: Conn, name: str) -> Any | None:
    """The id of the application called ``name``, its row locked until the transaction ends."""
    with translate("application"):
        return await conn.fetchval("SELECT id FROM applications WHERE name = $1 FOR UPDATE", name)


async def insert_provider(
    conn: Conn, provider_id: uuid.UUID, name: str, appid: str, app_secret: str | None, app_secret_sealed: bytes | None
) -> asyncpg.Record | None:
    """The new mini-program provider; None when one is already called ``name``."""
    with translate(f"provider {name!r}"):
        return await conn.fetchrow(
            """
            INSERT INTO providers (id, name, type, appid, app_secret, app_secret_sealed)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (name) DO NOTHING
            RETURNING *
            """,
            provider_id,
            name,
            PROVIDER_TYPE,
            appid,
            app_secret,
            app_secret_sealed,
        )


async def lock_provider(conn: Conn, name: str, appid: str) -> uuid.UUID | None:
    """The id of the mini-program provider called ``name`` with this ``appid``, its row locked."""
    with translate(f"provider {name!r}"):
        provider_id: uuid.UUID | None = await conn.fetchval(
            "SELECT id FROM providers WHERE name = $1 AND type = $2 AND appid = $3 FOR UPDATE",
            name,
            PROVIDER_TYPE,
            appid,
        )
    return provider_id


async def set_provider_secret(
    conn: Conn, provider_id: uuid.UUID, name: str, app_secret: str | None, app_secret_sealed: bytes | None
) -> asyncpg.Record:
    with translate(f"provider {name!r}"):
        row = await conn.fetchrow(
            "UPDATE providers SET app_secret = $2, app_secret_sealed = $3 WHERE id = $1 RETURNING *",
            provider_id,
            app_secret,
            app_secret_sealed,
        )
    assert row is not None, "the provider was locked by this transaction"
    return row


async def link_provider(conn: Conn, application_id: Any, provider_id: uuid.UUID) -> None:
    """Put the provider after the application's others, unless it is linked already."""
    with translate("provider"):
        await conn.execute(
            """
            INSERT INTO application_providers (application_id, provider_id, position)
            SELECT $1, $2, coalesce(max(position) + 1, 0) FROM application_providers WHERE application_id = $1
            ON CONFLICT (application_id, provider_id) DO NOTHING
            """,
            application_id,
            provider_id,
        )


async def listing(conn: Conn) -> tuple[list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record]]:
    """Every organization, every application (as ``application_by_name`` has it) and every provider, by name."""
    with translate("listing"):
        return (
            await conn.fetch("SELECT * FROM organizations ORDER BY name"),
            await conn.fetch(_APPLICATIONS + " GROUP BY a.id, o.name ORDER BY a.name"),
            await conn.fetch("SELECT * FROM providers ORDER BY name"),
        )


async def set_preprovisioned_only(conn: Conn, application: str, value: bool) -> bool:
    """Whether the application signs in only users created beforehand; False when there is no such application."""
    with translate("application"):
        status = await conn.execute(
            "UPDATE applications SET preprovisioned_only = $2 WHERE name = $1", application, value
        )
    return bool(status.endswith(" 1"))


async def set_content_safety(conn: Conn, application: str, value: bool) -> bool:
    with translate("application"):
        return (
            await conn.fetchval(
                "UPDATE applications SET content_safety = $2 WHERE name = $1 RETURNING true", application, value
            )
            is not None
        )
