"""Real infrastructure for tests: the PostgreSQL and Redis given by ``DATABASE_URL`` / ``REDIS_URL``, or embedded
ones started once per session. Each test gets its own database and key prefix and leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from services.embedded import EmbeddedPostgres, EmbeddedRedis, with_database
from tests.stack import Stack
from user_store import admin
from user_store.db import _init_connection
from user_store.master_key import MasterKey
from user_store.migrate import apply_migrations

#: Lines of figures tests want shown after the run even without -s (``pytest_terminal_summary``).
SUMMARY = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for line in config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def open_tmp() -> Iterator[Callable[[str], Path]]:
    """New directories other local users can traverse, removed after the session.

    For embedded PostgreSQL: run as root, pgserver starts postgres as its own user, which must reach the data
    directory. pytest's own temporary tree is private, and every pytest run that starts resets its root to 0700,
    so a second run on the machine would lock out the first one's postgres.
    """
    base = Path(tempfile.mkdtemp(prefix="minidoor-tests-"))
    base.chmod(0o755)

    def make(name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
        path.chmod(0o755)
        return path

    yield make
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(open_tmp: Callable[[str], Path]) -> Iterator[str]:
    """URL of a PostgreSQL server tests may create databases on."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    server = EmbeddedPostgres(open_tmp("pg") / "data")
    yield server.server_url
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis server; tests touch only keys under their own prefix."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    yield server.url
    server.stop()


async def create_database(server_url: str) -> str:
    name = f"minidoor_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty (unmigrated) database of its own, dropped after the test."""
    url = await create_database(pg_server_url)
    yield url
    await drop_database(pg_server_url, url)


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool (with the user store's codecs) on a migrated database of the test's own."""
    conn = await asyncpg.connect(pg_url)
    await apply_migrations(conn)
    await conn.close()
    async with asyncpg.create_pool(pg_url, min_size=1, max_size=2, init=_init_connection) as p:
        yield p


@pytest.fixture
def key_prefix() -> str:
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis; every key under the test's prefix is deleted afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await delete_prefix(client, key_prefix)
    await client.aclose()


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=500):
        await client.delete(key)


class Clock:
    """A clock the test moves (``clock.now += 5``), for what takes ``clock=`` instead of reading ``time.monotonic``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _stack_fixture(name: str, **env: str):
    """A module-scoped running stack on the test PostgreSQL/Redis, with its own database and key prefix."""

    @pytest.fixture(scope="module", name=name)
    def _fixture(pg_server_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
        import asyncio

        import redis as sync_redis

        database_url = asyncio.run(create_database(pg_server_url))
        prefix = f"test-{secrets.token_hex(6)}"
        stack = Stack(
            tmp_path_factory.mktemp(name),
            {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "KEY_PREFIX": prefix, **env},
        )
        try:
            yield stack.start()
        finally:
            if stack.process is not None:
                stack.stop()
            asyncio.run(drop_database(pg_server_url, database_url))
            client = sync_redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}:*", count=500):
                client.delete(key)
            client.close()

    return _fixture


stack = _stack_fixture("stack")
#: Its demo application (and every application created without --alg) signs ES256.
es256_stack = _stack_fixture("es256_stack", DEFAULT_SIGNING_ALG="ES256")
#: No auth worker at all, and a short deadline: what a client sees when nothing consumes the queue.
stack_without_workers = _stack_fixture("stack_without_workers", AUTH_WORKERS="0", LOGIN_TIMEOUT="1.5")


@pytest.fixture
async def conn(client: object, pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the database that the module's ``client`` (a user store it runs in this
    process, on ``pg_url``) has migrated."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


#: The appid of ``shop``'s mini-program provider.
SHOP_APPID = "wx-shop-appid"


@pytest.fixture
def provider_master() -> MasterKey | None:
    """The master key ``shop`` seals its AppSecret with: none, unless the module's user store has one."""
    return None


@pytest.fixture
async def shop(conn: asyncpg.Connection, provider_master: MasterKey | None) -> admin.NewApplication:
    """Application "shop" of organization "acme", with one mini-program provider (``SHOP_APPID``)."""
    await admin.create_organization(conn, "acme")
    app = await admin.create_application(conn, "acme", "shop")
    await admin.attach_miniprogram_provider(conn, "shop", SHOP_APPID, "wx-secret", master=provider_master)
    return app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client, as a mini program or a backend would use one."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's running stack's database, for assertions on what was written."""
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    yield conn
    await conn.close()
