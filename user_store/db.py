"""The asyncpg pool: created with bounded retries, JSON codecs set once; connections lent inside one translation of
connection failures (``user_store.queries``), so they come out retryable."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy

from shared.config import UserStoreConfig
from shared.tls import TLSRefused
from user_store.queries import CONNECTION_ERRORS, translate_connection

log = structlog.get_logger()

#: A plain connection or one borrowed from a pool; query helpers accept either.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
#: A store cut off from PostgreSQL mid-transaction (its link gone, its connections never closed) would hold its row
#: locks until the server noticed, hours later by TCP keepalive, stalling every other store's logins of those users
#: (``make scale-test``, user-store-link-cut): PostgreSQL ends a session idle in a transaction this long (ms).
IDLE_IN_TRANSACTION_TIMEOUT_MS = 5000


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: msgspec.json.encode(value).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


async def _reset_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Nothing beyond what the pool always does (roll back an open transaction, drop listeners): asyncpg's default
    reset is a round trip per release (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) for session
    state this service never leaves behind. Session-level advisory locks (the migration lock) are released by their
    holder; every other lock is transaction-level; nothing here runs LISTEN, SET or DECLARE outside a transaction."""


async def create_pool(config: UserStoreConfig, *, tries: int = 10, delay: float = 1.0) -> Pool:
    """Connect to ``config.database_url``, retrying ``tries`` times ``delay`` seconds apart, then raise; a refused
    certificate raises ``TLSRefused`` at once."""
    for attempt in range(1, tries + 1):
        try:
            return await asyncpg.create_pool(
                str(config.database_url),
                min_size=min(config.pg_pool_min, config.pg_pool_max),
                max_size=config.pg_pool_max,
                init=_init_connection,
                reset=_reset_connection,
                server_settings={"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS)},
            )
        except ssl.SSLCertVerificationError as exc:  # before CONNECTION_ERRORS (OSError): no retry mends it
            raise TLSRefused(
                f"PostgreSQL's certificate was refused ({exc.verify_message}): check DATABASE_URL's sslrootcert and "
                "host name"
            ) from None
        except CONNECTION_ERRORS as exc:
            remaining = tries - attempt
            if remaining == 0:
                raise
            log.warning("postgres_connect_retry", error=f"{type(exc).__name__}: {exc}", remaining=remaining)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Conn]:
    """A pooled connection inside one transaction; an unreachable database becomes ``Unavailable``
    (``queries.translate_connection``)."""
    with translate_connection():
        async with pool.acquire() as conn, conn.transaction():
            yield conn


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Conn]:
    """A pooled connection without a transaction (each statement commits alone): for reads that need no common
    snapshot, such as a token check, it saves BEGIN and COMMIT. Errors are translated as ``transaction`` does."""
    with translate_connection():
        async with pool.acquire() as conn:
            yield conn
