"""The one translation of asyncpg's errors (``user_store.queries``), against a real PostgreSQL: what a caller gets
when a statement collides with a row, breaks a check, carries text PostgreSQL cannot hold, or loses its server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.errors import BadRequest, Conflict, Unavailable
from tests.oauth_helpers import eventually
from user_store.db import transaction
from user_store.queries import translate
from user_store.queries.applications import insert_application, insert_organization, organization_by_name
from user_store.queries.users import insert_user, is_admin_user, write_user


@pytest.fixture(name="admin_conn")
async def _admin_conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own, to watch and terminate the others' server processes."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def _user(conn: asyncpg.Connection, organization_id: uuid.UUID, name: str) -> asyncpg.Record:
    row = await insert_user(
        conn,
        organization_id=organization_id,
        name=name,
        display_name=name,
        avatar="",
        signup_application="shop",
        properties={},
    )
    assert row is not None
    return row


class TestTranslate:
    async def test_duplicate_is_conflict(self, pool):
        """A second organization of one name is a 409 that names it, caused by the unique violation."""
        async with pool.acquire() as conn:
            await insert_organization(conn, "acme", "")
            with pytest.raises(Conflict) as caught:
                await insert_organization(conn, "acme", "Acme again")
        assert caught.value.status == 409
        assert caught.value.description == "organization 'acme' already exists"
        assert isinstance(caught.value.__cause__, asyncpg.UniqueViolationError)

    async def test_duplicate_names_the_field_it_broke(self, pool):
        """A user renamed to another user's name is a 409 naming the field, from the constraint's name."""
        async with pool.acquire() as conn:
            org = await insert_organization(conn, "acme", "")
            await _user(conn, org["id"], "alice")
            bob = await _user(conn, org["id"], "bob")
            with pytest.raises(Conflict) as caught:
                await write_user(conn, bob["user_id"], {"name": "alice"})
        assert caught.value.description == "name already exists in the organization"

    async def test_check_violation_is_bad_request(self, pool):
        """A value a CHECK constraint refuses is a 400 naming the constraint."""
        async with pool.acquire() as conn:
            await insert_organization(conn, "acme", "")
            with pytest.raises(BadRequest) as caught:
                await insert_application(
                    conn,
                    name="shop",
                    organization="acme",
                    client_id="not a client id",  # the check: 1 to 64 of [A-Za-z0-9_-] (Casdoor's ids fit)
                    client_secret_hash=b"\x00" * 32,
                    enable_sign_up=True,
                    expire_in_hours=1.0,
                )
        assert caught.value.status == 400
        assert caught.value.description == "invalid application 'shop' (applications_client_id_check)"

    async def test_nul_byte_is_bad_request(self, pool):
        """Text with a NUL byte, which PostgreSQL cannot hold nor compare, is the caller's 400, not a 500."""
        async with pool.acquire() as conn:
            with pytest.raises(BadRequest) as caught:
                await organization_by_name(conn, "a\x00b")
        assert caught.value.status == 400
        assert caught.value.description == "invalid organization: CharacterNotInRepertoireError"

    async def test_server_lost_mid_statement_is_unavailable(self, pool, admin_conn):
        """A server process that dies while a statement runs is a 503 to retry in a second."""
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()

            async def slow() -> None:
                with translate("sleep"):
                    await conn.fetchval("SELECT pg_sleep(30)")

            task = asyncio.create_task(slow())

            async def sleeping() -> bool:
                return bool(
                    await admin_conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%'", pid
                    )
                )

            await eventually(sleeping, 10, "the statement reaching the server")
            await admin_conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(Unavailable) as caught:
                await task
        assert caught.value.status == 503 and caught.value.retry_after == 1
        assert caught.value.description == "the database is unavailable (ConnectionDoesNotExistError)"

    async def test_statement_cancelled_by_the_server_is_unavailable(self, pool):
        """A statement the server cancels (its shutdown stopping the backend, or here statement_timeout) is a 503:
        SQLSTATE class 57, operator intervention, is the server's doing, not the caller's."""
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = 50")
            with pytest.raises(Unavailable) as caught, translate("sleep"):
                await conn.fetchval("SELECT pg_sleep(5)")
            await conn.execute("RESET statement_timeout")
        assert caught.value.status == 503
        assert caught.value.description == "the database is unavailable (QueryCanceledError)"

    async def test_connection_lost_in_a_transaction_is_unavailable(self, pool, admin_conn):
        """A pooled connection whose server went away between statements is a 503 as well: ``db.transaction`` and
        ``db.connection`` translate what the statement and the rollback raise on the dead connection."""
        with pytest.raises(Unavailable) as caught:
            async with transaction(pool) as conn:
                await admin_conn.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())

                async def closed() -> bool:
                    return conn.is_closed()

                await eventually(closed, 10, "the client seeing its connection closed")
                await is_admin_user(conn, str(uuid.uuid4()))
        assert caught.value.status == 503 and caught.value.retry_after == 1
        assert caught.value.description == "the database connection was lost (InterfaceError)"
