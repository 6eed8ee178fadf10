"""Backpressure at the gateway, and the Prometheus endpoints of the gateway and the user store.

Real Redis and PostgreSQL; the apps run in this process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.app import create_app as create_gateway
from gateway.login_jobs import JobPublisher, ReplyWaiter
from gateway.metrics import GatewayMetrics
from shared.config import GatewayConfig, Secret, UserStoreConfig
from shared.errors import DeadlineExceeded, Unavailable
from shared.redis_keys import RedisKeys
from user_store.app import create_app as create_user_store

TOKEN = Secret("t" * 32)


@pytest.fixture(name="keys")
def _keys(key_prefix: str) -> RedisKeys:
    return RedisKeys(key_prefix)


def publisher(redis: aioredis.Redis, keys: RedisKeys, max_len: int = 1000) -> tuple[JobPublisher, GatewayMetrics]:
    metrics = GatewayMetrics()
    return JobPublisher(redis, keys, ReplyWaiter(redis, keys), max_len, metrics), metrics


async def exchange(pub: JobPublisher, timeout: float = 2.0) -> Any:
    return await pub.exchange(request_id="r", client_id="c", code="code", username="", avatar="", timeout=timeout)


def shed(metrics: GatewayMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("minidoor_gateway_shed_logins_total", {"reason": reason}) or 0.0


async def old_job(redis: aioredis.Redis, keys: RedisKeys, age: float) -> bytes:
    """A job published ``age`` seconds ago (its stream id carries the time)."""
    await redis.xgroup_create(keys.job_stream, keys.worker_group, id="0", mkstream=True)
    entry_id = f"{int((time.time() - age) * 1000)}-0"
    return cast(bytes, await redis.xadd(keys.job_stream, {b"m": b"old"}, id=entry_id))


class TestBackpressure:
    async def test_full_stream_is_refused(self, redis_client, keys):
        """At STREAM_MAX_LEN the gateway answers 503 with Retry-After instead of queueing."""
        pub, metrics = publisher(redis_client, keys, max_len=3)
        for _ in range(3):
            await redis_client.xadd(keys.job_stream, {b"m": b"x"})
        with pytest.raises(Unavailable) as caught:
            await exchange(pub)
        assert caught.value.retry_after == 1
        assert await redis_client.xlen(keys.job_stream) == 3
        assert shed(metrics, "queue_full") == 1

    async def test_queue_that_cannot_be_served_in_time_sheds_load(self, redis_client, keys):
        """When the oldest job no worker has taken has waited over half the deadline, new logins get 503 at once."""
        await old_job(redis_client, keys, age=3.0)
        pub, metrics = publisher(redis_client, keys)
        start = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await exchange(pub, timeout=4.0)
        assert time.monotonic() - start < 1.0
        assert caught.value.retry_after == 3
        assert await redis_client.xlen(keys.job_stream) == 1
        assert shed(metrics, "queue_slow") == 1

    async def test_jobs_taken_by_workers_do_not_count_as_waiting(self, redis_client, keys):
        """An old job a worker already holds is not queueing delay: the new job is published (and waits)."""
        await old_job(redis_client, keys, age=3.0)
        await redis_client.xreadgroup(keys.worker_group, "busy-worker", {keys.job_stream: ">"})
        pub, metrics = publisher(redis_client, keys)
        with pytest.raises(DeadlineExceeded):
            await exchange(pub, timeout=0.3)
        assert await redis_client.xlen(keys.job_stream) == 2
        assert shed(metrics, "queue_slow") == 0

    async def test_unreachable_redis_is_503_at_once(self, tmp_path, keys):
        """With Redis away the gateway answers 503 + Retry-After immediately, not after connect retries."""
        client = aioredis.Redis(unix_socket_path=str(tmp_path / "nothing.sock"), retry=Retry(NoBackoff(), 1))
        pub, metrics = publisher(client, keys)
        start = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await exchange(pub)
        assert time.monotonic() - start < 1.0
        assert caught.value.retry_after == 1
        assert shed(metrics, "redis_unreachable") == 1
        await client.aclose()


@pytest.fixture(name="gateway")
async def _gateway(redis_url: str, key_prefix: str) -> AsyncIterator[TestClient[Any, Any]]:
    config = GatewayConfig(
        internal_token=TOKEN, redis_url=redis_url, user_store_url="http://127.0.0.1:9", key_prefix=key_prefix
    )
    async with TestClient(TestServer(create_gateway(config))) as client:
        yield client


class TestMetricsEndpoints:
    async def test_gateway_metrics(self, gateway, redis_client, keys):
        """The gateway's /metrics has request and login counters and the stream's length and pending count."""
        await old_job(redis_client, keys, age=0.0)
        await redis_client.xadd(keys.job_stream, {b"m": b"new"})
        await redis_client.xreadgroup(keys.worker_group, "busy-worker", {keys.job_stream: ">"}, count=1)
        resp = await gateway.post("/api/login/oauth/access_token", data={"tag": "wechat_miniprogram"})
        assert resp.status == 401
        # A refresh grant on the same endpoint is not a mini-program login.
        resp = await gateway.post("/api/login/oauth/access_token", data={"grant_type": "refresh_token"})
        assert resp.status == 401
        resp = await gateway.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
        assert 'minidoor_gateway_logins_total{outcome="invalid_client"} 1.0' in text
        assert "minidoor_gateway_login_duration_seconds_count 1.0" in text
        assert 'minidoor_gateway_requests_total{route="/api/login/oauth/access_token",status="401"} 2.0' in text
        assert "minidoor_stream_length 2.0" in text
        assert "minidoor_stream_pending 1.0" in text

    async def test_user_store_metrics(self, pg_url):
        """The user store's /metrics counts its requests by route and status."""
        config = UserStoreConfig(internal_token=TOKEN, database_url=Secret(pg_url))
        async with TestClient(TestServer(create_user_store(config))) as client:
            assert (await client.get("/readyz")).status == 200
            assert (await client.get("/internal/applications/nope")).status == 401
            text = await (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text()
        assert 'minidoor_user_store_requests_total{route="/readyz",status="200"} 1.0' in text
        assert 'route="/internal/applications/{client_id}",status="401"} 1.0' in text
        assert "minidoor_user_store_request_duration_seconds_bucket" in text
