"""WeChat AppSecrets encrypted at rest under the master key, as signing keys are, and still handed in clear to the
auth worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from shared.config import ConfigError, Secret
from shared.errors import Unavailable
from shared.user_store_client import UserStoreClient
from tests.oauth_helpers import make_app, stack_login
from tests.stack import ROOT, Stack
from tests.store_helpers import TOKEN
from tests.store_helpers import create_store as store_with
from user_store import admin
from user_store.master_key import MasterKey, WrongMasterKey

MASTER = "m" * 40
OTHER = "o" * 40
APPID = "wx-sealed-appid"
SECRET = "wechat-app-secret-0123456789abcdef"


def create_store(pg_url: str, master: str = MASTER) -> Any:
    return store_with(pg_url, master)


@pytest.fixture(name="client")
async def _client(pg_url: str):
    async with TestClient(TestServer(create_store(pg_url))) as client:
        yield client


async def new_app(conn: asyncpg.Connection, name: str, appid: str, secret: str, master: MasterKey | None) -> str:
    """An application ``name`` (organization "acme", made once) with one mini-program provider; its client id."""
    if not await conn.fetchval("SELECT count(*) FROM organizations WHERE name = 'acme'"):
        await admin.create_organization(conn, "acme")
    app = await admin.create_application(conn, "acme", name)
    await admin.attach_miniprogram_provider(conn, name, appid, secret, master=master)
    return app.client_id


async def provider_row(conn: asyncpg.Connection, appid: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM providers WHERE appid = $1", appid)
    assert row is not None
    return row


async def lookup(client, client_id: str) -> tuple[int, dict[str, Any]]:
    """The worker's provider lookup, as the raw HTTP answer."""
    async with client.get(
        f"/internal/applications/{client_id}/wechat-miniprogram", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        return resp.status, await resp.json()


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )


def _run_input(command: list[str], env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60)


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


class TestAtRest:
    async def test_stored_sealed_and_served_in_clear(self, client, conn):
        """With a master key the row holds only AES-GCM ciphertext bound to the provider's id; the internal API still
        hands the worker the clear secret in the same wire format."""
        client_id = await new_app(conn, "shop", APPID, SECRET, MasterKey(MASTER))
        row = await provider_row(conn, APPID)
        assert row["app_secret"] is None
        assert SECRET.encode() not in row["app_secret_sealed"]
        assert MasterKey(MASTER).open_provider_secret(row["app_secret_sealed"], str(row["id"]), row["name"]) == (
            SECRET.encode()
        )
        status, body = await lookup(client, client_id)
        assert (status, body) == (
            200,
            {
                "client_id": client_id,
                "provider": f"wechat-mp-{APPID}",
                "appid": APPID,
                "secret": SECRET,
                "content_safety": False,
            },
        )

    async def test_new_secret_is_sealed_again(self, client, conn):
        """Attaching the provider again with a new secret keeps its row (and id) and seals the new secret."""
        client_id = await new_app(conn, "shop", APPID, SECRET, MasterKey(MASTER))
        before = await provider_row(conn, APPID)
        await admin.attach_miniprogram_provider(conn, "shop", APPID, "rotated-secret", master=MasterKey(MASTER))
        after = await provider_row(conn, APPID)
        assert (after["id"], after["app_secret"]) == (before["id"], None)
        assert (await lookup(client, client_id))[1]["secret"] == "rotated-secret"

    async def test_without_master_key_clear_and_warned(self, pg_url):
        """Without a master key the secret is stored in clear, and the start says so once."""
        with capture_logs() as logs:
            async with TestClient(TestServer(create_store(pg_url, master=""))) as client:
                conn = await asyncpg.connect(pg_url)
                try:
                    client_id = await new_app(conn, "shop", APPID, SECRET, None)
                    row = await provider_row(conn, APPID)
                finally:
                    await conn.close()
                assert (await lookup(client, client_id))[1]["secret"] == SECRET
        assert (row["app_secret"], row["app_secret_sealed"]) == (SECRET, None)
        assert len(events(logs, "provider_secrets_unencrypted")) == 1


class TestSealingAtStart:
    async def test_clear_rows_are_sealed_and_counted(self, pg_url):
        """Secrets stored before there was a master key are sealed at the next start with one, which logs how many;
        a later start finds nothing left to seal and leaves the blobs alone."""
        async with TestClient(TestServer(create_store(pg_url, master=""))):
            conn = await asyncpg.connect(pg_url)
            try:
                first = await new_app(conn, "shop", APPID, SECRET, None)
                await new_app(conn, "blog", "wx-blog", "blog-secret", None)
            finally:
                await conn.close()
        with capture_logs() as logs:
            async with TestClient(TestServer(create_store(pg_url))) as client:
                assert (await lookup(client, first))[1]["secret"] == SECRET
        assert [e["count"] for e in events(logs, "provider_secrets_sealed")] == [2]
        conn = await asyncpg.connect(pg_url)
        try:
            sealed = {row["id"]: row["app_secret_sealed"] for row in await conn.fetch("SELECT * FROM providers")}
            assert await conn.fetchval("SELECT count(*) FROM providers WHERE app_secret IS NOT NULL") == 0
            with capture_logs() as logs:
                async with TestClient(TestServer(create_store(pg_url))):
                    pass
            assert [e["count"] for e in events(logs, "provider_secrets_sealed")] == [0]
            assert {
                row["id"]: row["app_secret_sealed"] for row in await conn.fetch("SELECT * FROM providers")
            } == sealed
        finally:
            await conn.close()

    async def test_concurrent_starts_seal_each_row_once(self, pg_url):
        """Two stores starting together: every clear row is sealed by exactly one of them, and both come up."""
        async with TestClient(TestServer(create_store(pg_url, master=""))):
            conn = await asyncpg.connect(pg_url)
            try:
                for n in range(3):
                    await new_app(conn, f"app-{n}", f"wx-app-{n}", f"secret-{n}", None)
            finally:
                await conn.close()
        first, second = TestClient(TestServer(create_store(pg_url))), TestClient(TestServer(create_store(pg_url)))
        try:
            with capture_logs() as logs:
                await asyncio.gather(first.start_server(), second.start_server())
        finally:
            await asyncio.gather(first.close(), second.close())
        assert sorted(e["count"] for e in events(logs, "provider_secrets_sealed")) in ([0, 3], [1, 2])
        assert sum(e["count"] for e in events(logs, "provider_secrets_sealed")) == 3
        conn = await asyncpg.connect(pg_url)
        try:
            for row in await conn.fetch("SELECT * FROM providers"):
                opened = MasterKey(MASTER).open_provider_secret(row["app_secret_sealed"], str(row["id"]), row["name"])
                assert opened == f"secret-{row['appid'].rsplit('-', 1)[1]}".encode()
        finally:
            await conn.close()


class TestUnreadable:
    async def test_wrong_master_key_is_a_503_naming_the_cause(self, client, conn):
        """A secret sealed under another master key: the worker's lookup gets a plain 503 (no traceback, no key
        material), the store logs which provider and why, and the typed client raises ``Unavailable``."""
        client_id = await new_app(conn, "shop", APPID, SECRET, MasterKey(MASTER))
        row = await provider_row(conn, APPID)
        await conn.execute(
            "UPDATE providers SET app_secret_sealed = $2 WHERE id = $1",
            row["id"],
            MasterKey(OTHER).seal_provider_secret(SECRET.encode(), str(row["id"])),
        )
        with capture_logs() as logs:
            status, body = await lookup(client, client_id)
        assert status == 503
        assert body["error"] == "temporarily_unavailable"
        assert "Traceback" not in str(body) and SECRET not in str(body)
        [line] = events(logs, "provider_secret_unreadable")
        assert line["provider"] == row["name"]
        assert "cannot be decrypted" in line["error"] and "MASTER_KEY" in line["error"]
        async with aiohttp.ClientSession() as session:
            store = UserStoreClient(session, str(client.make_url("")), Secret(TOKEN))
            with pytest.raises(Unavailable) as raised:
                await store.get_miniprogram_provider(client_id)
        assert raised.value.status == 503

    async def test_blob_does_not_open_on_another_row(self, client, conn):
        """A sealed secret copied onto another provider's row does not open there; the original row still works."""
        shop = await new_app(conn, "shop", APPID, SECRET, MasterKey(MASTER))
        blog = await new_app(conn, "blog", "wx-blog", "blog-secret", MasterKey(MASTER))
        source, target = await provider_row(conn, APPID), await provider_row(conn, "wx-blog")
        await conn.execute(
            "UPDATE providers SET app_secret_sealed = $2 WHERE id = $1", target["id"], source["app_secret_sealed"]
        )
        with pytest.raises(WrongMasterKey, match="cannot be decrypted"):
            MasterKey(MASTER).open_provider_secret(source["app_secret_sealed"], str(target["id"]), target["name"])
        assert (await lookup(client, blog))[0] == 503
        assert (await lookup(client, shop))[1]["secret"] == SECRET

    def test_purposes_do_not_mix(self):
        """A signing-key blob never opens as a provider secret with the same associated data, nor the reverse."""
        master = MasterKey(MASTER)
        with pytest.raises(WrongMasterKey):
            master.open_provider_secret(master.seal(b"pem", "same-id"), "same-id", "p")
        with pytest.raises(WrongMasterKey):
            master.open(master.seal_provider_secret(b"secret", "same-id"), "same-id")

    async def test_start_reports_unreadable_secrets(self, client, conn, pg_url):
        """A store still starts when a provider's secret does not open with its key, and logs which one."""
        await new_app(conn, "shop", APPID, SECRET, MasterKey(MASTER))
        row = await provider_row(conn, APPID)
        sealed = MasterKey(OTHER).seal_provider_secret(SECRET.encode(), str(row["id"]))
        await conn.execute("UPDATE providers SET app_secret_sealed = $2 WHERE id = $1", row["id"], sealed)
        with capture_logs() as logs:
            async with TestClient(TestServer(create_store(pg_url))):
                pass
        [line] = events(logs, "provider_secrets_unreadable")
        assert line["providers"] == [row["name"]] and "cannot be decrypted" in line["error"]


class TestWriters:
    async def test_missing_or_wrong_master_key_is_refused(self, client, conn):
        """Once the database holds encrypted secrets or keys, a write without the master key, or with another one,
        is refused and writes nothing."""
        await admin.create_organization(conn, "acme")
        await admin.create_application(conn, "acme", "shop")
        with pytest.raises(ConfigError, match="no master key is set"):
            await admin.attach_miniprogram_provider(conn, "shop", APPID, SECRET)
        with pytest.raises(WrongMasterKey, match="cannot be decrypted"):
            await admin.attach_miniprogram_provider(conn, "shop", APPID, SECRET, master=MasterKey(OTHER))
        assert await conn.fetchval("SELECT count(*) FROM providers") == 0

    async def test_cli_seals_with_the_environment_master_key(self, client, conn, pg_url, tmp_path: Path):
        """``admin attach-provider`` takes the master key as the user store does; without it, one line and exit 1."""
        await admin.create_organization(conn, "acme")
        await admin.create_application(conn, "acme", "shop")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASTER_KEY")}
        env.update(DATABASE_URL=pg_url, STATE_DIR=str(tmp_path), WECHAT_APP_SECRET=SECRET)
        command = [sys.executable, "-m", "services", "admin", "attach-provider", "--app", "shop", "--appid", APPID]

        refused = await asyncio.to_thread(_run, command, env)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith("error: ") and "no master key is set" in refused.stderr
        assert "Traceback" not in refused.stderr

        (tmp_path / "master.key").write_text(MASTER + "\n")  # the runner's default place, as for rotate-keys
        done = await asyncio.to_thread(_run, command, env)
        assert done.returncode == 0, done.stderr
        row = await provider_row(conn, APPID)
        assert row["app_secret"] is None
        assert MasterKey(MASTER).open_provider_secret(row["app_secret_sealed"], str(row["id"]), row["name"]) == (
            SECRET.encode()
        )

    async def test_cli_takes_the_secret_from_a_file_stdin_or_env_never_an_argument(
        self, client, conn, pg_url, tmp_path: Path
    ):
        """``--secret`` is refused before anything is written, and the secret shows in no output; a file, stdin and
        ``WECHAT_APP_SECRET`` each work; an empty secret is one error line."""
        await admin.create_organization(conn, "acme")
        for name in ("shop-a", "shop-b", "shop-c"):
            await admin.create_application(conn, "acme", name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASTER_KEY") and k != "WECHAT_APP_SECRET"}
        env.update(DATABASE_URL=pg_url, STATE_DIR=str(tmp_path), MASTER_KEY=MASTER)
        base = [sys.executable, "-m", "services", "admin", "attach-provider"]

        refused = await asyncio.to_thread(_run, [*base, "--app", "shop-a", "--appid", APPID, "--secret", SECRET], env)
        assert refused.returncode == 2
        assert "--secret would put the AppSecret on the command line" in refused.stderr
        assert SECRET not in refused.stderr + refused.stdout
        assert await conn.fetchval("SELECT count(*) FROM providers") == 0

        secret_file = tmp_path / "app-secret"
        secret_file.write_text(SECRET + "\n")
        by_file = await asyncio.to_thread(
            _run, [*base, "--app", "shop-a", "--appid", "wx00000000000000a1", "--secret-file", str(secret_file)], env
        )
        by_stdin = await asyncio.to_thread(
            _run_input, [*base, "--app", "shop-b", "--appid", "wx00000000000000b2"], env, SECRET + "\n"
        )
        by_env = await asyncio.to_thread(
            _run, [*base, "--app", "shop-c", "--appid", "wx00000000000000c3"], {**env, "WECHAT_APP_SECRET": SECRET}
        )
        for done in (by_file, by_stdin, by_env):
            assert done.returncode == 0, done.stderr
            assert SECRET not in done.stdout + done.stderr
        for appid in ("wx00000000000000a1", "wx00000000000000b2", "wx00000000000000c3"):
            row = await provider_row(conn, appid)
            assert MasterKey(MASTER).open_provider_secret(row["app_secret_sealed"], str(row["id"]), row["name"]) == (
                SECRET.encode()
            )

        empty = await asyncio.to_thread(
            _run_input, [*base, "--app", "shop-a", "--appid", "wx00000000000000d4"], env, ""
        )
        assert empty.returncode == 1
        assert empty.stderr == "error: the AppSecret from stdin is empty\n"


class TestEndToEnd:
    async def test_login_with_sealed_secrets(self, stack: Stack, db: asyncpg.Connection, session):
        """Through the running stack: the demo provider and one attached by the CLI are sealed in the database, and
        logins with both still reach WeChat (the sandbox checks the secret) and return tokens."""
        added = make_app(stack, "sealed-app")
        rows = await db.fetch("SELECT appid, app_secret, app_secret_sealed FROM providers")
        assert {row["appid"] for row in rows} == {stack.demo["wechatAppId"], added["appid"]}
        for row in rows:
            assert row["app_secret"] is None and row["app_secret_sealed"] is not None
        assert stack.demo["wechatAppSecret"].encode() not in b"".join(row["app_secret_sealed"] for row in rows)
        assert (await stack_login(session, stack, "o-sealed-1"))["access_token"]
        token = await stack_login(session, stack, "o-sealed-2", client_id=added["clientId"], appid=added["appid"])
        assert token["access_token"]
