"""The per-user cap on password changes in flight, held in PostgreSQL so it counts across user store replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.errors import RateLimited
from tests.oauth_helpers import eventually
from user_store import password_slots
from user_store.db import _init_connection
from user_store.migrate import apply_migrations


@pytest.fixture(name="replicas")
async def _replicas(pg_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools on one migrated database: what two user store replicas hold."""
    conn = await asyncpg.connect(pg_url)
    await apply_migrations(conn)
    await conn.close()
    async with (
        asyncpg.create_pool(pg_url, min_size=1, max_size=4, init=_init_connection) as a,
        asyncpg.create_pool(pg_url, min_size=1, max_size=4, init=_init_connection) as b,
    ):
        yield a, b


async def _claim(pool: asyncpg.Pool, user_id: str, **kwargs: float) -> password_slots.Slot:
    async with pool.acquire() as conn:
        return await password_slots.claim(conn, user_id, 3, **kwargs)


def _leases_passed(pool: asyncpg.Pool, user_id: str):
    async def check() -> bool:
        async with pool.acquire() as conn:
            query = "SELECT bool_and(expires_at < now()) FROM password_change_slots WHERE user_id = $1"
            return bool(await conn.fetchval(query, uuid.UUID(user_id)))

    return check


class TestSlots:
    async def test_cap_holds_across_replicas(self, replicas):
        """Three changes of one user in flight on two replicas fill its slots: a fourth on either answers 429,
        another user is unaffected, and a released slot is free again."""
        a, b = replicas
        user, other = str(uuid.uuid4()), str(uuid.uuid4())
        held = [await _claim(a, user), await _claim(b, user), await _claim(a, user)]
        assert sorted(slot.slot for slot in held) == [0, 1, 2]
        for pool in (a, b):
            with pytest.raises(RateLimited) as info:
                await _claim(pool, user)
            assert info.value.status == 429 and info.value.retry_after == 1
        await _claim(b, other)
        await password_slots.release(a, held[1])
        assert (await _claim(a, user)).slot == held[1].slot

    async def test_concurrent_claims(self, replicas):
        """Ten claims of one user at once, spread over two replicas: exactly three win, each a different slot."""
        a, b = replicas
        user = str(uuid.uuid4())
        results = await asyncio.gather(*(_claim(a if i % 2 else b, user) for i in range(10)), return_exceptions=True)
        won = [r for r in results if isinstance(r, password_slots.Slot)]
        assert sorted(slot.slot for slot in won) == [0, 1, 2]
        assert all(isinstance(r, RateLimited) for r in results if r not in won)

    async def test_slot_of_a_dead_store_expires(self, replicas):
        """A slot never released (its store died mid-hash) is claimable once its lease has passed; the late
        release of the first holder does not free the new holder's slot."""
        a, b = replicas
        user = str(uuid.uuid4())
        stale = [await _claim(a, user, lease_s=0.05) for _ in range(3)]
        await eventually(_leases_passed(a, user), 5, "the stale leases passing by the database's clock")
        fresh = await _claim(b, user)
        await password_slots.release(a, stale[fresh.slot])
        async with a.acquire() as conn:
            holder = await conn.fetchval(
                "SELECT holder FROM password_change_slots WHERE user_id = $1 AND slot = $2", fresh.user_id, fresh.slot
            )
        assert holder == fresh.holder
