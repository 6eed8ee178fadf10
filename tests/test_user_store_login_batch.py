"""A worker's logins at the user store (``auth_worker/user_store_logins.py``): those its jobs reach at once go as one
request, each with its own outcome; a lone login, and every login sent to a user store without the batch, go one
by one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import aiohttp
import asyncpg
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from auth_worker.user_store_logins import UserStoreLogins
from shared.config import Secret, UserStoreConfig
from shared.errors import Unauthorized
from shared.messages import LoginResult, WechatLogin
from shared.user_store_client import UserStoreClient
from user_store import admin
from user_store.app import create_app
from user_store.appkeys import METRICS

TOKEN = "t" * 32
APPID = "wx-batch-tests"
BATCH_ROUTE = "/internal/logins/wechat-miniprogram/batch"


def requests(store: TestServer, route: str) -> float:
    return (
        store.app[METRICS].registry.get_sample_value(
            "minidoor_user_store_requests_total", {"route": route, "status": "200"}
        )
        or 0.0
    )


async def test_concurrent_logins_share_one_request(pg_url):
    """Three logins at once: one request to the user store; two users get tokens, the unknown client alone gets
    its 401, each with its own request id in the user store's lines."""
    store = TestServer(create_app(UserStoreConfig(internal_token=Secret(TOKEN), database_url=Secret(pg_url))))
    async with store, aiohttp.ClientSession() as http:
        conn = await asyncpg.connect(pg_url)
        try:
            await admin.create_organization(conn, "acme")
            app = await admin.create_application(conn, "acme", "shop")
            await admin.attach_miniprogram_provider(conn, "shop", APPID, "secret")
        finally:
            await conn.close()
        logins = UserStoreLogins(UserStoreClient(http, str(store.make_url("")), Secret(TOKEN)))

        def login(client_id: str, openid: str, request_id: str) -> Awaitable[LoginResult]:
            wechat = WechatLogin(client_id=client_id, appid=APPID, openid=openid, session_key="sk")
            return logins.login(wechat, request_id=request_id, client_ip="10.0.0.1", answer_by=time.time() + 5)

        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
            first, second, unknown = await asyncio.gather(
                login(app.client_id, "o-1", "r-1"),
                login(app.client_id, "o-2", "r-2"),
                login("no-such-client", "o-3", "r-3"),
                return_exceptions=True,
            )
        outcomes = {line["request_id"]: line["outcome"] for line in lines if line["event"] == "login"}
        assert outcomes == {"r-1": "ok", "r-2": "ok", "r-3": "invalid_client"}
        assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
        assert first.created and second.created and first.user_id != second.user_id
        assert isinstance(unknown, Unauthorized) and unknown.error == "invalid_client"
        assert requests(store, BATCH_ROUTE) == 1
        assert requests(store, "/internal/logins/wechat-miniprogram") == 0

        alone = await login(app.client_id, "o-1", "r-4")
        assert not isinstance(alone, BaseException) and alone.user_id == first.user_id and not alone.created
        assert requests(store, "/internal/logins/wechat-miniprogram") == 1


async def test_a_store_without_the_batch_gets_logins_one_by_one():
    """A user store that answers the batch 404 (an older one, mid-upgrade) still logs every login in, one request
    each."""
    seen: list[str] = []
    count = 2

    async def single(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["openid"])
        token = {"access_token": "a", "id_token": "i", "refresh_token": "r", "token_type": "Bearer", "expires_in": 1,
                 "scope": "openid"}  # fmt: skip
        return web.json_response({"user_id": body["openid"], "user_name": "n", "created": False, "token": token})

    async def no_batch(request: web.Request) -> web.Response:
        return web.json_response({"error": "not_found", "error_description": "no such endpoint"}, status=404)

    old = web.Application()
    old.router.add_post("/internal/logins/wechat-miniprogram", single)
    old.router.add_post(BATCH_ROUTE, no_batch)
    async with TestServer(old) as store, aiohttp.ClientSession() as http:
        logins = UserStoreLogins(UserStoreClient(http, str(store.make_url("")), Secret(TOKEN)))
        results = await asyncio.gather(
            *(
                logins.login(
                    WechatLogin(client_id="c", appid=APPID, openid=f"o-{i}", session_key="sk"),
                    request_id=f"r-{i}",
                    client_ip="",
                    answer_by=time.time() + 5,
                )
                for i in range(count)
            )
        )
    assert [r.user_id for r in results] == [f"o-{i}" for i in range(count)]
    assert sorted(seen) == [f"o-{i}" for i in range(count)]
