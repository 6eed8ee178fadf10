"""Users as the account API sees them: Casdoor's JSON shape and password hashing. Their rows are read and written by
``user_store.queries.users``; this module adds ``NotFound`` for the ones a caller must find."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import NotFound
from shared.messages import CasdoorOrganization, CasdoorUser
from user_store.db import Conn
from user_store.queries import users as queries
from user_store.queries.applications import organization_by_name

MASK = "***"
PASSWORD_TYPE = "argon2id"
#: Casdoor's owner of organizations (and of every shared object).
ORGANIZATION_OWNER = "admin"
#: argon2-cffi's defaults (RFC 9106's low-memory profile): argon2id, 64 MiB, 3 passes.
_hasher = PasswordHasher()


async def user_by_id(conn: Conn, user_id: str, *, lock: bool = False) -> asyncpg.Record:
    """The user with this id; ``NotFound`` when there is none (a token's user always exists)."""
    row = await queries.user_by_id(conn, user_id, lock=lock)
    if row is None:
        raise NotFound("the user does not exist")
    return row


async def organization(conn: Conn, name: str) -> asyncpg.Record:
    row = await organization_by_name(conn, name)
    if row is None:
        raise NotFound("organization {name!r} does not exist", name=name)
    return row


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

    async def verify(self, password_hash: str, password: str) -> bool:
        """``verify_password`` in the same bounded pool: a check costs what a hash costs."""
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, verify_password, password_hash, password
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
