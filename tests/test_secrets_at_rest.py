"""No session_key, access token or refresh token in clear on disk: a stack on its own Redis with the append-only
file on (the runner's embedded one, under STATE_DIR), logins and refreshes, then the AOF files and a dump of every
PostgreSQL table are searched for each secret the run produced."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg

from tests.conftest import create_database
from tests.stack import Stack

LOGINS = 3


async def login_and_refresh(session: aiohttp.ClientSession, stack: Stack, openid: str) -> list[str]:
    """A login and a refresh; the session_key the sandbox issued and every token the gateway handed out."""
    appid, client_id = stack.demo["wechatAppId"], stack.demo["clientId"]
    async with session.post(stack.sandbox + "/sandbox/login", json={"appid": appid, "openid": openid}) as resp:
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": client_id, "code": code}
    async with session.post(stack.token_url, data=form) as resp:
        first = await resp.json()
        assert resp.status == 200, first
    async with session.get(f"{stack.sandbox}/sandbox/codes/{code}/session_key") as resp:
        session_key = (await resp.json())["session_key"]
    form = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": first["refresh_token"]}
    async with session.post(stack.gateway + "/api/login/oauth/refresh_token", data=form) as resp:
        second = await resp.json()
        assert resp.status == 200, second
    assert session_key
    return [session_key, *(t[k] for t in (first, second) for k in ("access_token", "refresh_token"))]


async def dump_tables(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        rows = [await conn.fetch(f'SELECT * FROM "{t["tablename"]}"') for t in tables]
        return repr([[dict(r) for r in table] for table in rows])
    finally:
        await conn.close()


async def test_no_secret_reaches_disk(open_tmp: Callable[[str], Path], pg_server_url: str) -> None:
    """After logins and refreshes, neither the Redis AOF nor any PostgreSQL table holds a session_key or a token of
    the run in clear (the sealing keys are STATE_DIR/master.key and STATE_DIR/stream.key)."""
    database_url = await create_database(pg_server_url)
    stack = Stack(open_tmp("at-rest") / "state", {"DATABASE_URL": database_url, "AUTH_WORKERS": "1"})
    await asyncio.to_thread(stack.start)
    try:
        async with aiohttp.ClientSession() as session:
            produced = [s for i in range(LOGINS) for s in await login_and_refresh(session, stack, f"o-at-rest-{i}")]
    finally:
        assert await asyncio.to_thread(stack.stop) == 0  # redis-server flushes its AOF on SIGTERM
    redis_dir = stack.state_dir / "redis"
    aof = b"".join(p.read_bytes() for p in redis_dir.rglob("*") if p.is_file() and p.name != "redis.log")
    assert b":exchange:" in aof, "the AOF holds no exchange record: the test would prove nothing"
    tables = await dump_tables(database_url)
    assert len(produced) == LOGINS * 5
    in_aof = [s for s in produced if s.encode() in aof]
    in_pg = [s for s in produced if s in tables]
    assert in_aof == [] and in_pg == [], (in_aof, in_pg)
