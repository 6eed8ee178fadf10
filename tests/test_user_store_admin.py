"""The user store's database side: migrations, signing keys, the pool and the admin functions."""

from __future__ import annotations

import asyncio
import hashlib
import re

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from services.admin import default_signing_alg
from shared.config import Secret, UserStoreConfig
from shared.errors import BadRequest, Conflict, NotFound
from user_store import admin
from user_store.app import create_app
from user_store.appkeys import SIGNER
from user_store.db import create_pool
from user_store.migrate import apply_migrations, load_migrations
from user_store.signing_keys import keyring


@pytest.fixture(name="raw_conn")
async def _raw_conn(pg_url: str):
    """A connection to the test's empty, unmigrated database."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


@pytest.fixture(name="conn")
async def _conn(raw_conn: asyncpg.Connection) -> asyncpg.Connection:
    """A connection to the test's database, migrated."""
    await apply_migrations(raw_conn)
    return raw_conn


def _config(pg_url: str) -> UserStoreConfig:
    return UserStoreConfig(internal_token=Secret("t" * 32), database_url=Secret(pg_url), issuer="http://issuer.test")


class TestMigrations:
    async def test_applies_every_file_once(self, raw_conn):
        """The first run applies every migration and records it; a second run applies nothing."""
        names = [name for _, name, _ in load_migrations()]
        assert names[0] == "0001_initial"
        assert await apply_migrations(raw_conn) == names
        assert await apply_migrations(raw_conn) == []
        rows = await raw_conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["name"] for r in rows] == names

    async def test_concurrent_runs_apply_once(self, pg_url, raw_conn):
        """Two processes migrating at once: one applies the files, the other waits and finds nothing to do."""
        other = await asyncpg.connect(pg_url)
        try:
            results = await asyncio.gather(apply_migrations(raw_conn), apply_migrations(other))
        finally:
            await other.close()
        names = [name for _, name, _ in load_migrations()]
        assert sorted(results, key=len) == [[], names]
        assert await raw_conn.fetchval("SELECT count(*) FROM schema_migrations") == len(names)

    async def test_releases_the_lock(self, raw_conn):
        """No advisory lock stays held by the connection after migrating."""
        await apply_migrations(raw_conn)
        held = await raw_conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0


class TestSigningKeys:
    async def test_concurrent_starts_make_one_key(self, pg_url, raw_conn):
        """Two user stores starting together on an empty database create exactly one signing key and share it."""
        first = TestClient(TestServer(create_app(_config(pg_url))))
        second = TestClient(TestServer(create_app(_config(pg_url))))
        try:
            await asyncio.gather(first.start_server(), second.start_server())
            kids = {first.app[SIGNER].current["RS256"].kid, second.app[SIGNER].current["RS256"].kid}
        finally:
            await asyncio.gather(first.close(), second.close())
        assert await raw_conn.fetchval("SELECT count(*) FROM signing_keys") == 1
        assert len(kids) == 1
        assert re.fullmatch(r"key-[0-9a-f]{8}", kids.pop())

    async def test_restart_reuses_the_key(self, pg_url, raw_conn):
        """A restarted user store signs with the key it created before; a retired key is no longer used."""
        kids = []
        for _ in range(2):
            async with TestClient(TestServer(create_app(_config(pg_url)))) as client:
                kids.append(client.app[SIGNER].current["RS256"].kid)
        assert kids[0] == kids[1]
        await raw_conn.execute("UPDATE signing_keys SET retired_at = now()")
        async with TestClient(TestServer(create_app(_config(pg_url)))) as client:
            signer = client.app[SIGNER]
            assert signer.current["RS256"].kid != kids[0]
            assert list(signer.public_keys()) == [signer.current["RS256"].kid]
            assert [k["kid"] for k in signer.jwks()["keys"]] == [signer.current["RS256"].kid]


class TestPool:
    async def test_gives_up_after_bounded_retries(self):
        """An unreachable database is retried a bounded number of times, with a warning naming what remains."""
        config = UserStoreConfig(
            internal_token=Secret("t" * 32), database_url=Secret("postgresql://nobody@127.0.0.1:1/none")
        )
        with capture_logs() as logs, pytest.raises(OSError):
            await create_pool(config, tries=3, delay=0.01)
        retries = [entry for entry in logs if entry["event"] == "postgres_connect_retry"]
        assert [entry["remaining"] for entry in retries] == [2, 1]
        assert all(entry["log_level"] == "warning" for entry in retries)


class TestAdmin:
    async def test_create_organization(self, conn):
        """An organization is created once; the same name again is a Conflict."""
        org = await admin.create_organization(conn, "acme", display_name="Acme Inc.")
        assert (org.name, org.display_name) == ("acme", "Acme Inc.")
        with pytest.raises(Conflict):
            await admin.create_organization(conn, "acme")

    async def test_create_application(self, conn):
        """A new application gets a 20-hex client id and a 40-hex secret, stored only as its sha256."""
        await admin.create_organization(conn, "acme")
        app = await admin.create_application(conn, "acme", "shop", enable_sign_up=False, expire_in_hours=2.5)
        assert re.fullmatch(r"[0-9a-f]{20}", app.client_id)
        assert re.fullmatch(r"[0-9a-f]{40}", app.client_secret)
        assert (app.organization, app.enable_sign_up, app.expire_in_hours, app.providers) == ("acme", False, 2.5, [])
        row = await conn.fetchrow("SELECT * FROM applications")
        assert row["client_secret_hash"] == hashlib.sha256(app.client_secret.encode()).digest()
        assert app.client_secret not in str(list(row.values()))
        as_json = msgspec.json.decode(msgspec.json.encode(app))
        assert {"clientId", "clientSecret", "enableSignUp", "expireInHours"} <= as_json.keys()
        assert (row["signing_alg"], as_json["tokenSigningMethod"]) == ("RS256", "RS256")

    async def test_es256_application(self, conn):
        """An ES256 application is stored so (Casdoor's ``tokenSigningMethod`` in JSON) and makes the first ES256
        key, current at once; a second one reuses that key. RS256 keys are left to the user store's start."""
        await admin.create_organization(conn, "acme")
        app = await admin.create_application(conn, "acme", "shop", signing_alg="ES256")
        await admin.create_application(conn, "acme", "blog", signing_alg="ES256")
        assert msgspec.to_builtins(app)["tokenSigningMethod"] == "ES256"
        assert [(key.algorithm, key.status) for key in await keyring.list_keys(conn)] == [("ES256", "current")]
        assert await keyring.algorithms_in_use(conn) == ["RS256", "ES256"]

    def test_default_signing_alg(self):
        """``create-app`` without ``--alg`` takes DEFAULT_SIGNING_ALG, else RS256; another value names the
        variable."""
        assert default_signing_alg({}) == "RS256"
        assert default_signing_alg({"DEFAULT_SIGNING_ALG": "ES256"}) == "ES256"
        with pytest.raises(BadRequest, match="DEFAULT_SIGNING_ALG must be RS256 or ES256, not 'ES512'"):
            default_signing_alg({"DEFAULT_SIGNING_ALG": "ES512"})

    async def test_create_application_errors(self, conn):
        """An unknown organization is NotFound, a taken name Conflict, a non-positive expiry BadRequest."""
        with pytest.raises(NotFound):
            await admin.create_application(conn, "nope", "shop")
        await admin.create_organization(conn, "acme")
        await admin.create_application(conn, "acme", "shop")
        with pytest.raises(Conflict):
            await admin.create_application(conn, "acme", "shop")
        with pytest.raises(BadRequest):
            await admin.create_application(conn, "acme", "other", expire_in_hours=0)
        for alg in ("HS256", "none", "rs256", "ES512"):
            with pytest.raises(BadRequest, match="must be RS256 or ES256"):
                await admin.create_application(conn, "acme", "other", signing_alg=alg)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE applications SET signing_alg = 'HS256'")

    async def test_rotate_client_secret(self, conn):
        """Rotating replaces the stored hash with the new secret's; an unknown application is NotFound."""
        await admin.create_organization(conn, "acme")
        app = await admin.create_application(conn, "acme", "shop")
        secret = await admin.rotate_client_secret(conn, "shop")
        assert secret != app.client_secret
        stored = await conn.fetchval("SELECT client_secret_hash FROM applications")
        assert stored == hashlib.sha256(secret.encode()).digest()
        with pytest.raises(NotFound):
            await admin.rotate_client_secret(conn, "nope")

    async def test_attach_provider_is_idempotent(self, conn):
        """Attaching the same appid twice makes one provider and one link; the next appid goes after it."""
        await admin.create_organization(conn, "acme")
        await admin.create_application(conn, "acme", "shop")
        first = await admin.attach_miniprogram_provider(conn, "shop", "wx1", "s1")
        again = await admin.attach_miniprogram_provider(conn, "shop", "wx1", "s1")
        assert first.name == again.name == "wechat-mp-wx1"
        await admin.attach_miniprogram_provider(conn, "shop", "wx2", "s2", name="second")
        assert await conn.fetchval("SELECT count(*) FROM providers") == 2
        assert (await admin.get_application(conn, "shop")).providers == ["wechat-mp-wx1", "second"]

    async def test_attach_provider_errors(self, conn):
        """An unknown application is NotFound; a provider name bound to another appid is a Conflict."""
        with pytest.raises(NotFound):
            await admin.attach_miniprogram_provider(conn, "nope", "wx1", "s1")
        await admin.create_organization(conn, "acme")
        await admin.create_application(conn, "acme", "shop")
        await admin.attach_miniprogram_provider(conn, "shop", "wx1", "s1", name="mp")
        with pytest.raises(Conflict):
            await admin.attach_miniprogram_provider(conn, "shop", "wx2", "s2", name="mp")

    async def test_list_all_hides_secrets(self, conn):
        """The listing shows every object, no client secret, and provider secrets masked as ***."""
        await admin.create_organization(conn, "acme")
        app = await admin.create_application(conn, "acme", "shop")
        await admin.attach_miniprogram_provider(conn, "shop", "wx1", "wx-app-secret")
        listing = msgspec.json.decode(msgspec.json.encode(await admin.list_all(conn)))
        assert [o["name"] for o in listing["organizations"]] == ["acme"]
        assert [a["name"] for a in listing["applications"]] == ["shop"]
        assert listing["providers"][0]["clientId"] == "wx1"
        assert listing["providers"][0]["clientSecret"] == "***"
        text = str(listing)
        assert "wx-app-secret" not in text
        assert app.client_secret not in text
        assert "clientSecret" not in listing["applications"][0]

    async def test_get_application(self, conn):
        """An application is found by name; an unknown name is NotFound."""
        await admin.create_organization(conn, "acme")
        created = await admin.create_application(conn, "acme", "shop")
        found = await admin.get_application(conn, "shop")
        assert found.client_id == created.client_id
        with pytest.raises(NotFound):
            await admin.get_application(conn, "nope")
