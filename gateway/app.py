"""The gateway's application factory: routes, middlewares and the resources its lifecycle owns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import appkeys
from gateway.applications import ApplicationCache
from gateway.introspector import ClientSecrets, Introspector
from gateway.limits import GatewayLimits, limits_ctx, rate_limit_middleware
from gateway.login_jobs import JobPublisher, ReplyWaiter
from gateway.metrics import GatewayMetrics, metrics_middleware
from gateway.middleware import error_middleware
from gateway.routes import setup_routes
from shared.config import GatewayConfig
from shared.guard import harden, input_guard
from shared.i18n import load_catalogues
from shared.middleware import request_log
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys
from shared.streamseal import stream_seal
from shared.user_store_client import UserStoreClient
from shared.verifier import Verifier


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(
        middlewares=[request_log, metrics_middleware, error_middleware, input_guard, rate_limit_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[appkeys.CONFIG] = config
    app[appkeys.METRICS] = GatewayMetrics()
    app[appkeys.REDIS_KEYS] = RedisKeys(config.key_prefix)
    app[appkeys.LIMITS] = GatewayLimits(config)
    setup_routes(app)
    harden(app, config.body_read_timeout)
    app.cleanup_ctx.append(_catalogues)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(limits_ctx)
    app.cleanup_ctx.append(_user_store)
    app.cleanup_ctx.append(_replies)
    app.cleanup_ctx.append(_verifier)
    return app


async def _catalogues(app: web.Application) -> AsyncIterator[None]:
    app[appkeys.CATALOGUES] = load_catalogues()
    yield


async def _redis(app: web.Application) -> AsyncIterator[None]:
    # No connect at start: the gateway must come up (and answer 503) while Redis is away. One immediate retry
    # replaces a connection that went stale (Redis restarted); a Redis that is away gets a 503 at once.
    client = aioredis.Redis.from_url(
        app[appkeys.CONFIG].redis_url,
        **app[appkeys.CONFIG].redis_options(),
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
    )
    app[appkeys.REDIS] = client
    app[appkeys.REDIS_BATCHER] = RedisBatcher(client)
    yield
    await client.aclose()


async def _user_store(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
    client = UserStoreClient(session, config.user_store_url, config.internal_token)
    app[appkeys.USER_STORE] = client
    app[appkeys.APPLICATIONS] = ApplicationCache(client, config.client_cache_ttl)
    yield
    await session.close()


async def _replies(app: web.Application) -> AsyncIterator[None]:
    waiter = ReplyWaiter(app[appkeys.REDIS], app[appkeys.REDIS_KEYS], stream_seal(app[appkeys.CONFIG].stream_seal_key))
    app[appkeys.REPLIES] = waiter
    app[appkeys.PUBLISHER] = JobPublisher(
        app[appkeys.REDIS],
        app[appkeys.REDIS_KEYS],
        waiter,
        app[appkeys.CONFIG].stream_max_len,
        app[appkeys.METRICS],
        batcher=app[appkeys.REDIS_BATCHER],
    )
    waiter.start()
    yield
    await waiter.stop()


async def _verifier(app: web.Application) -> AsyncIterator[None]:
    """``app[appkeys.VERIFIER]``: checks bearer tokens of every application locally (JWKS from the user store,
    revocations from Redis). It starts in the background, so the gateway comes up while either is away."""
    client = app[appkeys.USER_STORE]

    async def fetch_jwks() -> Mapping[str, Any]:
        doc: dict[str, Any] = msgspec.to_builtins(await client.get_jwks())
        return doc

    verifier = Verifier(
        issuer=app[appkeys.CONFIG].issuer,
        audience=None,
        jwks=fetch_jwks,
        redis=app[appkeys.REDIS],
        redis_keys=app[appkeys.REDIS_KEYS],
    )
    await verifier.start()
    app[appkeys.VERIFIER] = verifier
    secrets = ClientSecrets(app[appkeys.CONFIG].client_secret_ttl)
    app[appkeys.INTROSPECTOR] = Introspector(verifier, client, secrets, app[appkeys.METRICS])
    yield
    await verifier.close()
