"""Users as the account API sees them: lookups, Casdoor's JSON shape, writes, and password hashing.

asyncpg's unique violations on users become ``Conflict`` here, naming the field that collided.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import Conflict, NotFound
from shared.messages import CasdoorOrganization, CasdoorUser
from user_store.db import Conn
from user_store.queries import translate
from user_store.queries.applications import organization_by_name

MASK = "***"
PASSWORD_TYPE = "argon2id"
#: Casdoor's owner of organizations (and of every shared object).
ORGANIZATION_OWNER = "admin"
#: argon2-cffi's defaults (RFC 9106's low-memory profile): argon2id, 64 MiB, 3 passes.
_hasher = PasswordHasher()

_USER = """
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
    """The user of ``organization`` whose name, id, email (any case) or phone is ``value``; ``lock`` holds its row
    until the transaction ends."""
    if by == "id":
        try:
            value = str(uuid.UUID(value))
        except ValueError:
            return None
    sql = f"{_USER} WHERE o.name = $1 AND {_LOOKUPS[by]} ORDER BY u.created_at LIMIT 1"
    if lock:
        sql += " FOR UPDATE OF u"
    with translate("user"):
        return await conn.fetchrow(sql, organization, value)


async def user_by_id(conn: Conn, user_id: str, *, lock: bool = False) -> asyncpg.Record:
    """The user with this id; ``NotFound`` when there is none (a token's user always exists)."""
    sql = f"{_USER} WHERE u.id = $1::uuid" + (" FOR UPDATE OF u" if lock else "")
    with translate("user"):
        row = await conn.fetchrow(sql, user_id)
    if row is None:
        raise NotFound("the user does not exist")
    return row


async def list_users(
    conn: Conn, organization: str, *, limit: int | None, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """A page of the organization's users, oldest first, and how many it has in all."""
    with translate("user"):
        rows = await conn.fetch(
            f"{_USER} WHERE o.name = $1 ORDER BY u.created_at, u.name LIMIT $2 OFFSET $3", organization, limit, offset
        )
        total = await conn.fetchval(
            "SELECT count(*) FROM users u JOIN organizations o ON o.id = u.organization_id WHERE o.name = $1",
            organization,
        )
    return list(rows), int(total)


async def organization(conn: Conn, name: str) -> asyncpg.Record:
    row = await organization_by_name(conn, name)
    if row is None:
        raise NotFound(f"organization {name!r} does not exist")
    return row


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
    """Set ``changes`` (column -> value; the columns come from ``user_updates.FIELDS``, never from a client)."""
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
    try:
        with translate("user"):
            await conn.execute(
                f"UPDATE users SET {assignments}, updated_at = now() WHERE id = $1", user_id, *changes.values()
            )
    except Conflict as exc:
        cause = exc.__cause__
        field = _UNIQUE.get(getattr(cause, "constraint_name", "") or "", "a unique field")
        raise Conflict(f"{field} already exists in the organization") from cause


def casdoor_user(row: asyncpg.Record) -> CasdoorUser:
    return CasdoorUser(
        owner=row["organization"],
        name=row["name"],
        id=str(row["id"]),
        created_time=casdoor_time(row["created_at"]),
        updated_time=casdoor_time(row["updated_at"]),
        type=row["type"],
        password=MASK if row["password_hash"] else "",
        password_type=PASSWORD_TYPE if row["password_hash"] else "",
        display_name=row["display_name"],
        avatar=row["avatar"],
        permanent_avatar="",
        email=row["email"],
        email_verified=False,
        phone=row["phone"],
        country_code=row["country_code"],
        signup_application=row["signup_application"],
        is_admin=row["is_admin"],
        is_forbidden=row["is_forbidden"],
        is_deleted=row["is_deleted"],
        wechat=row["openid"],
        properties={str(k): str(v) for k, v in (row["properties"] or {}).items()},
    )


def casdoor_organization(row: asyncpg.Record) -> CasdoorOrganization:
    return CasdoorOrganization(
        owner=ORGANIZATION_OWNER,
        name=row["name"],
        created_time=casdoor_time(row["created_at"]),
        display_name=row["display_name"],
        default_avatar=row["default_avatar"],
        password_type=PASSWORD_TYPE,
    )


def casdoor_time(value: datetime) -> str:
    """RFC 3339 to the second, as Casdoor writes ``createdTime``."""
    return value.astimezone(UTC).isoformat(timespec="seconds")


class PasswordHashing:
    """Bounded argon2id hashing: at most ``concurrency`` hashes at once (each takes 64 MiB and a core), in a thread
    pool of its own so a burst neither starves ``asyncio.to_thread`` nor holds a PostgreSQL connection. How many
    changes of one user may wait here is capped across replicas by ``user_store.password_slots``."""

    def __init__(self, concurrency: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, _hasher.hash, password)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
