"""The sealed columns: providers' AppSecrets, the WeChat session_keys of identities and tokens, and (for the master
key's checks and rotation) signing keys' private keys. What goes in them is decided by ``user_store.provider_secrets``
and ``user_store.session_keys``; the reads that lock take their rows until the caller's transaction ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

# --- provider secrets --------------------------------------------------------------------------------------------


async def clear_provider_secrets(conn: Conn) -> list[asyncpg.Record]:
    """``id, app_secret`` of every provider whose secret is in clear, locked."""
    with translate("provider secret"):
        return await conn.fetch("SELECT id, app_secret FROM providers WHERE app_secret IS NOT NULL FOR UPDATE")


async def sealed_provider_secrets(conn: Conn, *, lock: bool = False, limit: int | None = None) -> list[asyncpg.Record]:
    """``id, name, app_secret_sealed`` of the providers whose secret is sealed (at most ``limit`` of them)."""
    sql = "SELECT id, name, app_secret_sealed FROM providers WHERE app_secret_sealed IS NOT NULL LIMIT $1"
    with translate("provider secret"):
        return await conn.fetch(sql + (" FOR UPDATE" if lock else ""), limit)


async def write_provider_secrets(conn: Conn, rows: Iterable[tuple[uuid.UUID, str | None, bytes | None]]) -> None:
    """Set ``(id, app_secret, app_secret_sealed)`` of each provider."""
    with translate("provider secret"):
        await conn.executemany("UPDATE providers SET app_secret = $2, app_secret_sealed = $3 WHERE id = $1", rows)


async def reseal_provider_secrets(conn: Conn, rows: Iterable[tuple[uuid.UUID, bytes]]) -> None:
    """Set ``(id, app_secret_sealed)`` of each provider."""
    with translate("provider secret"):
        await conn.executemany("UPDATE providers SET app_secret_sealed = $2 WHERE id = $1", rows)


# --- session keys ------------------------------------------------------------------------------------------------


async def clear_identity_session_keys(conn: Conn) -> list[asyncpg.Record]:
    """``organization_id, appid, openid, session_key`` of the WeChat identities holding one in clear, locked."""
    with translate("session key"):
        return await conn.fetch(
            "SELECT organization_id, appid, openid, session_key FROM wechat_identities "
            "WHERE session_key <> '' FOR UPDATE"
        )


async def sealed_identity_session_keys(conn: Conn) -> list[asyncpg.Record]:
    """``organization_id, appid, openid, session_key_sealed`` of the WeChat identities holding a sealed one, locked."""
    with translate("session key"):
        return await conn.fetch(
            "SELECT organization_id, appid, openid, session_key_sealed FROM wechat_identities "
            "WHERE session_key_sealed IS NOT NULL FOR UPDATE"
        )


async def write_identity_session_keys(conn: Conn, rows: Iterable[tuple[Any, str, str, str, bytes | None]]) -> None:
    """Set ``(organization_id, appid, openid, session_key, session_key_sealed)`` of each identity."""
    with translate("session key"):
        await conn.executemany(
            "UPDATE wechat_identities SET session_key = $4, session_key_sealed = $5 "
            "WHERE organization_id = $1 AND appid = $2 AND openid = $3",
            rows,
        )


async def reseal_identity_session_keys(conn: Conn, rows: Iterable[tuple[Any, str, str, bytes]]) -> None:
    """Set ``(organization_id, appid, openid, session_key_sealed)`` of each identity."""
    with translate("session key"):
        await conn.executemany(
            "UPDATE wechat_identities SET session_key_sealed = $4 "
            "WHERE organization_id = $1 AND appid = $2 AND openid = $3",
            rows,
        )


async def clear_token_session_keys(conn: Conn) -> list[asyncpg.Record]:
    """``id, family_id, session_key`` of the token rows holding one in clear, locked."""
    with translate("session key"):
        return await conn.fetch("SELECT id, family_id, session_key FROM tokens WHERE session_key <> '' FOR UPDATE")


async def sealed_token_session_keys(conn: Conn) -> list[asyncpg.Record]:
    """``id, family_id, session_key_sealed`` of the token rows holding a sealed one, locked."""
    with translate("session key"):
        return await conn.fetch(
            "SELECT id, family_id, session_key_sealed FROM tokens WHERE session_key_sealed IS NOT NULL FOR UPDATE"
        )


async def write_token_session_keys(conn: Conn, rows: Iterable[tuple[Any, str, bytes | None]]) -> None:
    """Set ``(id, session_key, session_key_sealed)`` of each token row."""
    with translate("session key"):
        await conn.executemany("UPDATE tokens SET session_key = $2, session_key_sealed = $3 WHERE id = $1", rows)


async def reseal_token_session_keys(conn: Conn, rows: Iterable[tuple[Any, bytes]]) -> None:
    """Set ``(id, session_key_sealed)`` of each token row."""
    with translate("session key"):
        await conn.executemany("UPDATE tokens SET session_key_sealed = $2 WHERE id = $1", rows)


# --- signing keys, as the master key sees them -------------------------------------------------------------------


async def live_sealed_signing_key(conn: Conn) -> asyncpg.Record | None:
    """``kid, private_key_enc`` of one unretired signing key sealed under the master key."""
    with translate("signing key"):
        return await conn.fetchrow(
            "SELECT kid, private_key_enc FROM signing_keys "
            "WHERE retired_at IS NULL AND private_key_enc IS NOT NULL LIMIT 1"
        )


async def sealed_signing_keys(conn: Conn) -> list[asyncpg.Record]:
    """``kid, private_key_enc`` of every sealed signing key, retired ones included, locked."""
    with translate("signing key"):
        return await conn.fetch(
            "SELECT kid, private_key_enc FROM signing_keys WHERE private_key_enc IS NOT NULL FOR UPDATE"
        )


async def reseal_signing_keys(conn: Conn, rows: Iterable[tuple[str, bytes]]) -> None:
    """Set ``(kid, private_key_enc)`` of each signing key."""
    with translate("signing key"):
        await conn.executemany("UPDATE signing_keys SET private_key_enc = $2 WHERE kid = $1", rows)
