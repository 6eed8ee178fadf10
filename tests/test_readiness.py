"""The gateway's ``/readyz``, through HTTP: ready only while it can serve a login (Redis and the user store answer).

Real Redis and PostgreSQL; the gateway and the user store run in this process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app as create_gateway
from shared.config import GatewayConfig, Secret, UserStoreConfig
from user_store.app import create_app as create_user_store
from user_store.appkeys import PG_POOL

TOKEN = Secret("t" * 32)


@pytest.fixture(name="user_store")
async def _user_store(pg_url: str) -> AsyncIterator[TestServer]:
    server = TestServer(create_user_store(UserStoreConfig(internal_token=TOKEN, database_url=Secret(pg_url))))
    await server.start_server()
    yield server
    await server.close()


def gateway(redis_url: str, user_store_url: str, key_prefix: str) -> TestClient[Any, Any]:
    config = GatewayConfig(
        internal_token=TOKEN, redis_url=redis_url, user_store_url=user_store_url, key_prefix=key_prefix
    )
    return TestClient(TestServer(create_gateway(config)))


async def test_ready_while_redis_and_the_user_store_answer(redis_url, key_prefix, user_store):
    """Both dependencies up: 200 ok; the user store stopped: 503 naming it, with Redis not named."""
    async with gateway(redis_url, str(user_store.make_url("")), key_prefix) as client:
        resp = await client.get("/readyz")
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        await user_store.close()
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert body["status"] == "unavailable"
        assert set(body["reasons"]) == {"user_store"}
        assert body["reasons"]["user_store"].startswith("the user store did not answer")


async def test_not_ready_while_the_user_store_cannot_reach_postgres(redis_url, key_prefix, pg_url):
    """A user store that answers but is itself not ready (its database gone) keeps the gateway unready."""
    config = UserStoreConfig(internal_token=TOKEN, database_url=Secret(pg_url))
    async with TestClient(TestServer(create_user_store(config))) as store:
        async with gateway(redis_url, str(store.make_url("")), key_prefix) as client:
            assert (await client.get("/readyz")).status == 200
            await store.app[PG_POOL].close()
            resp = await client.get("/readyz")
            assert resp.status == 503
            assert (await resp.json())["reasons"] == {"user_store": "the user store is not ready (HTTP 503)"}


async def test_not_ready_without_redis(key_prefix, user_store):
    """Redis unreachable: 503 with the reason under `redis`, the user store still fine."""
    async with gateway("redis://127.0.0.1:9/0", str(user_store.make_url("")), key_prefix) as client:
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert set(body["reasons"]) == {"redis"}
        assert body["reasons"]["redis"].startswith("Redis did not answer")
