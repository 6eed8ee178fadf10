"""Signing keys: the rows of ``signing_keys``, one ring per algorithm, and the lock every writer of them holds. What
to create or rotate, when a key expires, when to lock and what to seal are ``user_store.signing_keys.keyring``'s;
the sealed column as the master key sees it is in ``secrets``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

#: Arbitrary but fixed: user stores and admin commands serialise every change of signing_keys on this lock.
_KEY_LOCK = 0x6D642D6B657973  # "md-keys"
_LIVE = "retired_at IS NULL AND (verify_until IS NULL OR verify_until > now())"
#: The kid of the current key of the algorithm ``{alg}`` names (an SQL expression): its newest live, active key.
_CURRENT_OF = (
    f"SELECT kid FROM signing_keys WHERE {_LIVE} AND activates_at <= now() AND algorithm = {{alg}} "
    "ORDER BY activates_at DESC, kid DESC LIMIT 1"
)
#: What ``list-keys`` shows of a key, its ``status`` included; never any private material.
_INFO = f"""
    SELECT kid, algorithm, private_key_enc IS NOT NULL AS encrypted, created_at, activates_at, verify_until, retired_at,
           CASE
               WHEN retired_at IS NOT NULL THEN 'retired'
               WHEN verify_until IS NOT NULL AND verify_until <= now() THEN 'expired'
               WHEN activates_at > now() THEN 'pending'
               WHEN kid = ({_CURRENT_OF.format(alg="k.algorithm")}) THEN 'current'
               ELSE 'superseded'
           END AS status
    FROM signing_keys k
"""


async def lock(conn: Conn) -> None:
    """The transaction-level advisory lock on every change of ``signing_keys``, until the caller's transaction ends."""
    with translate("signing key"):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEY_LOCK)


async def key_infos(conn: Conn) -> list[asyncpg.Record]:
    """The ``_INFO`` of every key, newest first."""
    with translate("signing key"):
        return await conn.fetch(_INFO + " ORDER BY activates_at DESC, kid DESC")


async def key_info(conn: Conn, kid: str) -> asyncpg.Record | None:
    with translate("signing key"):
        return await conn.fetchrow(_INFO + " WHERE kid = $1", kid)


async def current_kid(conn: Conn, alg: str) -> str | None:
    """The kid of the current ``alg`` key."""
    with translate("signing key"):
        kid: str | None = await conn.fetchval(_CURRENT_OF.format(alg="$1"), alg)
        return kid


async def current_certificate(conn: Conn, alg: str) -> asyncpg.Record | None:
    """``kid, certificate_pem`` of the current ``alg`` key (its certificate may still be NULL)."""
    with translate("signing key"):
        return await conn.fetchrow(
            f"SELECT kid, certificate_pem FROM signing_keys WHERE kid = ({_CURRENT_OF.format(alg='$1')})", alg
        )


async def algorithms_in_use(conn: Conn) -> set[str]:
    """The ``signing_alg`` of every application and the algorithm of every live key."""
    with translate("signing key"):
        rows = await conn.fetch(
            f"SELECT signing_alg AS alg FROM applications UNION SELECT algorithm FROM signing_keys WHERE {_LIVE}"
        )
    return {row["alg"] for row in rows}


async def all_keys(conn: Conn) -> list[asyncpg.Record]:
    """``kid, algorithm, private_key_pem, private_key_enc, certificate_pem, retired_at`` of every key."""
    with translate("signing key"):
        return await conn.fetch(
            "SELECT kid, algorithm, private_key_pem, private_key_enc, certificate_pem, retired_at FROM signing_keys"
        )


async def write_certificate(conn: Conn, kid: str, certificate_pem: str) -> None:
    with translate("signing key"):
        await conn.execute("UPDATE signing_keys SET certificate_pem = $2 WHERE kid = $1", kid, certificate_pem)


async def seal_private_key(conn: Conn, kid: str, sealed: bytes) -> None:
    """Replace the key's private key in clear by ``sealed``."""
    with translate("signing key"):
        await conn.execute(
            "UPDATE signing_keys SET private_key_enc = $2, private_key_pem = NULL WHERE kid = $1", kid, sealed
        )


async def insert_key(
    conn: Conn,
    *,
    kid: str,
    alg: str,
    private_key_pem: str | None,
    private_key_enc: bytes | None,
    certificate_pem: str,
    activate_in: float,
) -> None:
    """A new key, signing ``activate_in`` seconds from now; either ``private_key_pem`` or ``private_key_enc`` is set."""
    with translate("signing key"):
        await conn.execute(
            """
            INSERT INTO signing_keys (kid, algorithm, private_key_pem, private_key_enc, certificate_pem, activates_at)
            VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 second')
            """,
            kid,
            alg,
            private_key_pem,
            private_key_enc,
            certificate_pem,
            activate_in,
        )


async def retire(conn: Conn, kid: str) -> None:
    with translate("signing key"):
        await conn.execute("UPDATE signing_keys SET retired_at = now() WHERE kid = $1", kid)


async def live_expiries(conn: Conn) -> list[asyncpg.Record]:
    """``kid, algorithm, activates_at, superseded_at, verify_until`` of every live key, by algorithm, oldest first."""
    with translate("signing key"):
        return await conn.fetch(
            f"SELECT kid, algorithm, activates_at, superseded_at, verify_until FROM signing_keys WHERE {_LIVE} "
            "ORDER BY algorithm, activates_at, kid"
        )


async def longest_token_hours(conn: Conn) -> float:
    """The longest access or refresh token lifetime of any application, in hours (0 without applications)."""
    with translate("application"):
        hours = await conn.fetchval(
            "SELECT coalesce(max(greatest(expire_in_hours, refresh_expire_in_hours)), 0) FROM applications"
        )
    return float(hours)


async def write_expiry(conn: Conn, kid: str, superseded_at: datetime | None, verify_until: datetime | None) -> None:
    with translate("signing key"):
        await conn.execute(
            "UPDATE signing_keys SET superseded_at = $2, verify_until = $3 WHERE kid = $1",
            kid,
            superseded_at,
            verify_until,
        )


async def live_keys(conn: Conn) -> list[asyncpg.Record]:
    """``kid, algorithm, active`` (it activated) of every live key, newest first."""
    with translate("signing key"):
        return await conn.fetch(
            f"SELECT kid, algorithm, activates_at <= now() AS active FROM signing_keys WHERE {_LIVE} "
            "ORDER BY activates_at DESC, kid DESC"
        )


async def private_keys(conn: Conn, kids: Sequence[str]) -> list[asyncpg.Record]:
    """``kid, algorithm, private_key_pem, private_key_enc, certificate_pem, created_at`` of the keys ``kids``."""
    with translate("signing key"):
        return await conn.fetch(
            "SELECT kid, algorithm, private_key_pem, private_key_enc, certificate_pem, created_at "
            "FROM signing_keys WHERE kid = ANY($1::text[])",
            kids,
        )
