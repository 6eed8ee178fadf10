"""WeChat session_keys encrypted at rest under the master key, as provider secrets are (migration 0006)."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared.config import Secret, UserStoreConfig
from tests.store_helpers import TOKEN
from tests.store_helpers import create_store as store_with
from user_store import admin
from user_store.app import create_app
from user_store.master_key import MasterKey, WrongMasterKey
from user_store.session_keys import family_row, identity_row

MASTER = "m" * 40
APPID = "wx-sk-appid"
SESSION_KEY = "sk-clear-0123456789"


def create_store(pg_url: str, master: str = MASTER) -> Any:
    return store_with(pg_url, master)


async def call(client: Any, path: str, body: dict[str, str]) -> Any:
    async with client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        return msgspec.json.decode(text)


async def setup_app(pg_url: str, master: MasterKey | None = None) -> str:
    conn = await asyncpg.connect(pg_url)
    try:
        await admin.create_organization(conn, "acme")
        app = await admin.create_application(conn, "acme", "shop")
        await admin.attach_miniprogram_provider(conn, "shop", APPID, "wx-secret", master=master)
        return app.client_id
    finally:
        await conn.close()


async def login(client: Any, client_id: str, session_key: str = SESSION_KEY) -> Any:
    body = {"client_id": client_id, "appid": APPID, "openid": "openid-1", "session_key": session_key}
    return await call(client, "/internal/logins/wechat-miniprogram", body)


async def dump(pg_url: str) -> str:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = [*await conn.fetch("SELECT * FROM wechat_identities"), *await conn.fetch("SELECT * FROM tokens")]
        return repr([dict(r) for r in rows])
    finally:
        await conn.close()


class TestSessionKeysSealed:
    async def test_login_and_refresh_store_no_clear_session_key(self, pg_url):
        """With a master key, a login and a refresh leave the session_key only sealed: each row opens to it with
        its own natural key as AAD, and the tokens of a refreshed family share it."""
        async with TestClient(TestServer(create_store(pg_url))) as client:
            client_id = await setup_app(pg_url, MasterKey(MASTER))
            token = (await login(client, client_id))["token"]
            body = {"client_id": client_id, "refresh_token": token["refresh_token"]}
            await call(client, "/internal/tokens/refresh", body)
        assert SESSION_KEY not in await dump(pg_url)
        master = MasterKey(MASTER)
        conn = await asyncpg.connect(pg_url)
        try:
            identity = await conn.fetchrow("SELECT * FROM wechat_identities")
            tokens = await conn.fetch("SELECT * FROM tokens")
        finally:
            await conn.close()
        assert identity is not None and identity["session_key"] == ""
        row = identity_row(identity["organization_id"], APPID, "openid-1")
        assert master.open_session_key(identity["session_key_sealed"], row).decode() == SESSION_KEY
        assert len(tokens) == 2
        for t in tokens:
            assert t["session_key"] == ""
            opened = master.open_session_key(t["session_key_sealed"], family_row(t["family_id"]))
            assert opened.decode() == SESSION_KEY
        with pytest.raises(WrongMasterKey):
            master.open_session_key(tokens[0]["session_key_sealed"], row)

    async def test_clear_rows_are_sealed_at_start(self, pg_url):
        """Rows written without a master key keep their session_key in clear; the next start with one seals them."""
        no_master = create_app(
            UserStoreConfig(internal_token=Secret(TOKEN), database_url=Secret(pg_url), issuer="http://issuer.test")
        )
        async with TestClient(TestServer(no_master)) as client:
            client_id = await setup_app(pg_url)
            await login(client, client_id)
        assert SESSION_KEY in await dump(pg_url)
        async with TestClient(TestServer(create_store(pg_url))):
            pass
        assert SESSION_KEY not in await dump(pg_url)
