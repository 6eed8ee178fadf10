"""Users, their WeChat identities and their password-change slots: the login's reads and writes, then the account
API's."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from shared.errors import Conflict
from user_store.db import Conn
from user_store.queries import translate

# --- the WeChat login --------------------------------------------------------------------------------------------

#: The columns of a user the login reads, named as ``queries.tokens.subject`` reads them.
_LOGIN_USER = "u.id AS user_id, u.name AS user_name, u.display_name, u.avatar, u.is_forbidden, u.is_deleted"


async def lock_keys(conn: Conn, keys: list[int]) -> None:
    """Transaction-level advisory locks, taken one by one in the given order."""
    with translate("lock"):
        for key in keys:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)


# A login reads the user FOR KEY SHARE: an update-user forbidding it (FOR UPDATE) waits for the login's commit, so
# revoke_user_tokens sees the token it minted; a login after the forbid waits for that commit and reads the flag.
# Either way no token of a forbidden user outlives the change, which the gateways' introspection relies on.


async def user_by_openid(conn: Conn, organization_id: Any, appid: str, openid: str) -> asyncpg.Record | None:
    with translate("user"):
        return await conn.fetchrow(
            f"""
            SELECT {_LOGIN_USER}, w.unionid
            FROM wechat_identities w JOIN users u ON u.id = w.user_id
            WHERE w.organization_id = $1 AND w.appid = $2 AND w.openid = $3
            FOR KEY SHARE OF u
            """,
            organization_id,
            appid,
            openid,
        )


async def user_by_phone(conn: Conn, organization_id: Any, phone: str) -> asyncpg.Record | None:
    """The organization's user with these phone digits (unique per organization), and their country code."""
    with translate("user"):
        return await conn.fetchrow(
            f"""
            SELECT {_LOGIN_USER}, u.country_code
            FROM users u WHERE u.organization_id = $1 AND u.phone = $2
            FOR KEY SHARE OF u
            """,
            organization_id,
            phone,
        )


async def insert_phone_user(conn: Conn, organization_id: Any, name: str, phone: str, country_code: str) -> Any:
    """A user created by an admin ahead of their phone sign-in; its id. ``Conflict`` for a taken name or phone."""

    def duplicate(constraint: str) -> Conflict:
        if "phone" in constraint:
            return Conflict("the phone number is taken")
        return Conflict("the name {name} is taken", name=repr(name))

    with translate("user", duplicate=duplicate):
        return await conn.fetchval(
            """
            INSERT INTO users (organization_id, name, phone, country_code, avatar, signup_application)
            SELECT o.id, $2, $3, $4, o.default_avatar, '' FROM organizations o WHERE o.id = $1
            RETURNING id
            """,
            organization_id,
            name,
            phone,
            country_code,
        )


async def sign_in_methods(conn: Conn, user_id: Any) -> asyncpg.Record | None:
    """What a user can sign in with: their WeChat identities by AppID, whether they have a phone and a password."""
    with translate("user"):
        return await conn.fetchrow(
            """
            SELECT coalesce((SELECT array_agg(w.appid) FROM wechat_identities w WHERE w.user_id = u.id), '{}')
                       AS appids,
                   u.phone <> '' AS has_phone, coalesce(u.password_hash, '') <> '' AS has_password
            FROM users u WHERE u.id = $1
            """,
            user_id,
        )


async def delete_identities(conn: Conn, user_id: Any, appid: str) -> int:
    """Remove the user's WeChat identities of ``appid``; how many."""
    with translate("wechat identity"):
        status = await conn.execute("DELETE FROM wechat_identities WHERE user_id = $1 AND appid = $2", user_id, appid)
    return int(status.split()[-1])


async def set_user_phone(conn: Conn, user_id: Any, phone: str, country_code: str) -> None:
    with translate("user"):
        await conn.execute(
            "UPDATE users SET phone = $2, country_code = $3, updated_at = now() WHERE id = $1",
            user_id,
            phone,
            country_code,
        )


async def user_by_unionid(conn: Conn, organization_id: Any, unionid: str) -> asyncpg.Record | None:
    with translate("user"):
        return await conn.fetchrow(
            f"""
            SELECT {_LOGIN_USER}
            FROM wechat_identities w JOIN users u ON u.id = w.user_id
            WHERE w.organization_id = $1 AND w.unionid = $2
            ORDER BY w.created_at LIMIT 1
            FOR KEY SHARE OF u
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
            RETURNING {_LOGIN_USER}
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
            RETURNING {_LOGIN_USER}
            """,
            user_id,
            display_name,
            avatar,
        )
    assert row is not None, "the user was locked by this transaction"
    return row


@dataclass(frozen=True, slots=True)
class Identity:
    """A WeChat identity: its key in ``wechat_identities``, and the unionid WeChat gave with it ("" for none)."""

    organization_id: Any
    appid: str
    openid: str
    unionid: str


async def insert_identity(
    conn: Conn, identity: Identity, *, user_id: Any, session_key: str, session_key_sealed: bytes | None = None
) -> None:
    with translate("wechat identity"):
        await conn.execute(
            """
            INSERT INTO wechat_identities (organization_id, user_id, appid, openid, unionid, session_key,
                                           session_key_sealed)
            VALUES ($1, $2, $3, $4, nullif($5, ''), $6, $7)
            """,
            identity.organization_id,
            user_id,
            identity.appid,
            identity.openid,
            identity.unionid,
            session_key,
            session_key_sealed,
        )


async def refresh_identity(
    conn: Conn, identity: Identity, *, session_key: str, session_key_sealed: bytes | None = None
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
            identity.organization_id,
            identity.appid,
            identity.openid,
            session_key,
            identity.unionid,
            session_key_sealed,
        )


# --- the account API ---------------------------------------------------------------------------------------------

#: A whole user, with its organization's name and its first WeChat openid.
_ACCOUNT_USER = """
    SELECT u.*, o.name AS organization,
           coalesce((SELECT w.openid FROM wechat_identities w WHERE w.user_id = u.id
                     ORDER BY w.created_at LIMIT 1), '') AS openid
    FROM users u JOIN organizations o ON o.id = u.organization_id
"""
Lookup = Literal["name", "id", "email", "phone"]
_LOOKUPS: dict[Lookup, str] = {
    "name": "u.name = $2",
    "id": "u.id = $2::uuid",
    "email": "lower(u.email) = lower($2)",
    "phone": "u.phone = $2",
}
#: The unique constraints of users, by the field a client sees.
_UNIQUE = {
    "users_organization_id_name_key": "name",
    "users_organization_email": "email",
    "users_organization_phone": "phone",
}


async def find_user(
    conn: Conn, organization: str, by: Lookup, value: str, *, lock: bool = False
) -> asyncpg.Record | None:
    """The user of ``organization`` whose name, id, email (any case) or phone is ``value``, never an erased one;
    ``lock`` holds its row until the transaction ends."""
    if by == "id":
        try:
            value = str(uuid.UUID(value))
        except ValueError:
            return None
    sql = f"{_ACCOUNT_USER} WHERE o.name = $1 AND {_LOOKUPS[by]} AND u.erased_at IS NULL ORDER BY u.created_at LIMIT 1"
    if lock:
        sql += " FOR UPDATE OF u"
    with translate("user"):
        return await conn.fetchrow(sql, organization, value)


async def user_by_id(conn: Conn, user_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    sql = f"{_ACCOUNT_USER} WHERE u.id = $1::uuid" + (" FOR UPDATE OF u" if lock else "")
    with translate("user"):
        return await conn.fetchrow(sql, user_id)


async def list_users(
    conn: Conn, organization: str, *, limit: int | None, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """A page of the organization's users, oldest first, and how many it has in all; erased users are not listed."""
    with translate("user"):
        rows = await conn.fetch(
            f"{_ACCOUNT_USER} WHERE o.name = $1 AND u.erased_at IS NULL"
            " ORDER BY u.created_at, u.name LIMIT $2 OFFSET $3",
            organization,
            limit,
            offset,
        )
        total = await conn.fetchval(
            "SELECT count(*) FROM users u JOIN organizations o ON o.id = u.organization_id"
            " WHERE o.name = $1 AND u.erased_at IS NULL",
            organization,
        )
    return list(rows), int(total)


async def is_admin_user(conn: Conn, user_id: str) -> bool:
    """Whether the user is an ``isAdmin`` user of its organization."""
    with translate("user"):
        return bool(await conn.fetchval("SELECT is_admin FROM users WHERE id = $1::uuid", user_id))


async def taken_by(conn: Conn, user: asyncpg.Record, field: str, value: str) -> bool:
    """Whether another user of ``user``'s organization already has this name, email (any case) or phone."""
    condition = {"name": "name = $2", "email": "lower(email) = lower($2)", "phone": "phone = $2"}[field]
    with translate("user"):
        return bool(
            await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM users WHERE organization_id = $1 AND {condition} AND id <> $3)",
                user["organization_id"],
                value,
                user["id"],
            )
        )


async def write_user(conn: Conn, user_id: Any, changes: dict[str, Any]) -> None:
    """Set ``changes`` (column -> value; the columns come from ``user_updates.FIELDS``, never from a client); a
    duplicate is a ``Conflict`` naming the field that collided."""
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
    with translate("user", duplicate=_duplicate_field):
        await conn.execute(
            f"UPDATE users SET {assignments}, updated_at = now() WHERE id = $1", user_id, *changes.values()
        )


def _duplicate_field(constraint: str) -> Conflict:
    return Conflict("{field} already exists in the organization", field=_UNIQUE.get(constraint, "a unique field"))


async def claim_password_slot(conn: Conn, user_id: uuid.UUID, slot: int, holder: uuid.UUID, lease_s: float) -> bool:
    """Whether ``holder`` now holds the user's ``slot`` for ``lease_s``: it was free, or its lease had expired."""
    with translate("password change slot"):
        return (
            await conn.fetchval(
                """
                INSERT INTO password_change_slots AS s (user_id, slot, holder, expires_at)
                VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                ON CONFLICT (user_id, slot) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                    WHERE s.expires_at < now()
                RETURNING slot
                """,
                user_id,
                slot,
                holder,
                lease_s,
            )
            is not None
        )


async def release_password_slot(conn: Conn, user_id: uuid.UUID, slot: int, holder: uuid.UUID) -> None:
    """Free the user's ``slot`` if ``holder`` still holds it."""
    with translate("password change slot"):
        await conn.execute(
            "DELETE FROM password_change_slots WHERE user_id = $1 AND slot = $2 AND holder = $3", user_id, slot, holder
        )
