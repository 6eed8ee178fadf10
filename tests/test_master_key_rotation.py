"""Rotating the master key and INTERNAL_TOKEN without downtime: the old value is accepted for reading (or calling)
during the rollover, and ``reseal_all`` (``make rotate-master-key``) moves every sealed column to the new key."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.store_helpers import TOKEN, create_store
from user_store import admin
from user_store.master_key import MasterKey, WrongMasterKey
from user_store.rekey import reseal_all
from user_store.session_keys import family_row, identity_row

OLD, NEW = "o" * 40, "n" * 40
OLD_TOKEN = "p" * 32
APPID = "wx-rekey-appid"
SECRET = "wechat-app-secret-rekey"
_DESC = {"error_description": "a valid internal bearer token is required"}


async def lookup(client: Any, client_id: str, token: str = TOKEN) -> tuple[int, Any]:
    path = f"/internal/applications/{client_id}/wechat-miniprogram"
    async with client.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


async def login(client: Any, client_id: str) -> None:
    body = {"client_id": client_id, "appid": APPID, "openid": "o-rekey", "session_key": "sk-rekey"}
    async with client.post(
        "/internal/logins/wechat-miniprogram", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert resp.status == 200, await resp.text()


async def test_rollover_then_reseal(pg_url: str) -> None:
    """Data sealed under the old key is served by a store given the new key and the old as previous; after
    reseal_all every signing key, provider secret and session_key opens under the new key alone, not the old."""
    async with TestClient(TestServer(create_store(pg_url, OLD))) as client:
        conn = await asyncpg.connect(pg_url)
        try:
            await admin.create_organization(conn, "acme")
            client_id = (await admin.create_application(conn, "acme", "shop")).client_id
            await admin.attach_miniprogram_provider(conn, "shop", APPID, SECRET, master=MasterKey(OLD))
        finally:
            await conn.close()
        await login(client, client_id)
    async with TestClient(TestServer(create_store(pg_url, NEW, previous=OLD))) as client:
        assert await lookup(client, client_id) == (200, {**(await lookup(client, client_id))[1], "secret": SECRET})
        await login(client, client_id)  # written under NEW while OLD rows remain
    conn = await asyncpg.connect(pg_url)
    try:
        counts = await reseal_all(conn, MasterKey(NEW, MasterKey(OLD)))
        assert counts["signing_keys"] >= 1 and counts["providers"] == 1
        assert counts["wechat_identities"] == 1 and counts["tokens"] == 2
        assert await reseal_all(conn, MasterKey(NEW, MasterKey(OLD))) == counts  # idempotent
        new, old = MasterKey(NEW), MasterKey(OLD)
        for r in await conn.fetch("SELECT kid, private_key_enc FROM signing_keys WHERE private_key_enc IS NOT NULL"):
            new.open(r["private_key_enc"], r["kid"])
            with pytest.raises(WrongMasterKey):
                old.open(r["private_key_enc"], r["kid"])
        p = await conn.fetchrow("SELECT id, name, app_secret_sealed FROM providers")
        assert p is not None
        assert new.open_provider_secret(p["app_secret_sealed"], str(p["id"]), p["name"]).decode() == SECRET
        i = await conn.fetchrow("SELECT * FROM wechat_identities")
        assert i is not None
        row = identity_row(i["organization_id"], APPID, "o-rekey")
        assert new.open_session_key(i["session_key_sealed"], row) == b"sk-rekey"
        for t in await conn.fetch("SELECT family_id, session_key_sealed FROM tokens"):
            assert new.open_session_key(t["session_key_sealed"], family_row(t["family_id"])) == b"sk-rekey"
    finally:
        await conn.close()
    async with TestClient(TestServer(create_store(pg_url, NEW))) as client:
        status, body = await lookup(client, client_id)
        assert status == 200 and body["secret"] == SECRET


async def test_two_internal_tokens_during_rollover(pg_url: str) -> None:
    """With INTERNAL_TOKEN_PREVIOUS set, callers holding either token are served; any other token is a 401."""
    async with TestClient(TestServer(create_store(pg_url, NEW, token_previous=OLD_TOKEN))) as client:
        # An unknown client is refused by the view, past the token check; a bad token is refused before it.
        assert (await lookup(client, "nope"))[1]["error"] != "invalid_token"
        assert (await lookup(client, "nope", OLD_TOKEN))[1]["error"] != "invalid_token"
        assert (await lookup(client, "nope", "x" * 32)) == (401, {"error": "invalid_token", **_DESC})
    async with TestClient(TestServer(create_store(pg_url, NEW))) as client:
        assert (await lookup(client, "nope", OLD_TOKEN))[1]["error"] == "invalid_token"
