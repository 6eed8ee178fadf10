"""``create_app(config)``: the user store as an aiohttp application, and the resources its lifecycle owns (the pool
and migrations, password hashing, the Redis client that broadcasts revocations, the signing keys with the task that
re-reads them, the audit log's tasks). No I/O until the app starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from shared.config import UserStoreConfig
from shared.guard import harden, input_guard
from shared.middleware import request_log
from shared.redis_keys import RedisKeys
from user_store import content_safety
from user_store.appkeys import (
    AUDIT,
    AVATARS,
    CONFIG,
    MASTER_KEY,
    METRICS,
    PASSWORD_HASHING,
    PG_POOL,
    REVOCATIONS,
    RULES,
    SIGNER,
)
from user_store.audit import AuditStreamDrain, AuditWriter
from user_store.avatars import PostgresAvatarStore
from user_store.db import create_pool
from user_store.master_key import load_master_key
from user_store.metrics import UserStoreMetrics, metrics_middleware
from user_store.middleware import client_ip_middleware, error_middleware, internal_auth_middleware
from user_store.migrate import apply_migrations
from user_store.provider_secrets import prepare_provider_secrets
from user_store.pruning import prune_forever
from user_store.queries.audit import delete_events_before
from user_store.queries.tokens import delete_expired
from user_store.revocations import Revocations
from user_store.routes import setup_routes
from user_store.session_keys import prepare_session_keys
from user_store.signing_keys.keyring import KeyLoader, KeyReloader, prepare_keys
from user_store.signing_keys.signer import Signer
from user_store.user_rules import UserRules
from user_store.users import PasswordHashing


def create_app(config: UserStoreConfig, *, connect_tries: int = 10) -> web.Application:
    """The user store; its pool, migrations and signing keys come up in ``cleanup_ctx`` when it starts."""
    app = web.Application(
        middlewares=[
            request_log,
            client_ip_middleware,
            metrics_middleware,
            error_middleware,
            input_guard,
            internal_auth_middleware,
        ],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = UserStoreMetrics()
    app[RULES] = UserRules.from_config(config)

    async def database(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(config, tries=connect_tries)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
        except BaseException:
            await pool.close()
            raise
        app[PG_POOL] = pool
        app[AVATARS] = PostgresAvatarStore(pool)
        yield
        await pool.close()

    async def password_hashing(app: web.Application) -> AsyncIterator[None]:
        hashing = PasswordHashing(config.password_hash_concurrency)
        app[PASSWORD_HASHING] = hashing
        yield
        hashing.close()

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(password_hashing)
    app.cleanup_ctx.append(_revocations)
    app.cleanup_ctx.append(_signing_keys)
    app.cleanup_ctx.append(_audit)
    setup_routes(app)
    harden(app, config.body_read_timeout)
    return app


async def _revocations(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # No connect at start: like the gateway, the store comes up while Redis is away; revocations then answer 503.
    client = (
        aioredis.Redis.from_url(config.redis_url, **config.redis_options(), socket_timeout=5, socket_connect_timeout=2)
        if config.redis_url
        else None
    )
    revocations = Revocations(client, RedisKeys(config.key_prefix))
    app[REVOCATIONS] = revocations
    heartbeat = asyncio.create_task(revocations.heartbeat_forever()) if client is not None else None
    yield
    if heartbeat is not None:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    if client is not None:
        await client.aclose()


async def _signing_keys(app: web.Application) -> AsyncIterator[None]:
    """Check the master key, prepare and load the keys (``ConfigError`` stops the start), seal the provider secrets
    still in clear, then reload the keys."""
    config = app[CONFIG]
    master = load_master_key(config.master_key, config.master_key_file, config.master_key_previous)
    app[MASTER_KEY] = master
    loader = KeyLoader(master)
    async with app[PG_POOL].acquire() as conn:
        await prepare_keys(conn, master)
        await prepare_provider_secrets(conn, master)
        await prepare_session_keys(conn, master)
        keys, current = await loader.live_keys(conn)
    signer = Signer(config.issuer, keys, current)
    app[SIGNER] = signer
    reloader = KeyReloader(app[PG_POOL], signer, loader, config.key_reload_interval, app[REVOCATIONS].keys_changed)
    task = asyncio.create_task(reloader.run(), name="signing-key-reloader")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _audit(app: web.Application) -> AsyncIterator[None]:
    """The writer, the stream drain (with ``REDIS_URL``) and the prune; at shutdown the queue is flushed."""
    config = app[CONFIG]
    pool = app[PG_POOL]
    writer = AuditWriter(
        pool,
        app[METRICS],
        flush_interval=config.audit_flush_interval,
        batch_size=config.audit_batch_size,
        queue_size=config.audit_queue_size,
    )
    app[AUDIT] = writer
    tasks = [
        asyncio.create_task(writer.run(), name="audit-writer"),
        asyncio.create_task(
            prune_forever(
                pool,
                "audit_events",
                lambda conn, limit: delete_events_before(conn, config.audit_retention_days, limit),
                every=config.prune_interval,
            ),
            name="audit-prune",
        ),
        asyncio.create_task(
            prune_forever(
                pool,
                "tokens",
                lambda conn, limit: delete_expired(conn, config.token_prune_grace, limit),
                every=config.prune_interval,
            ),
            name="token-prune",
        ),
        asyncio.create_task(
            prune_forever(
                pool,
                "avatar_reviews",
                lambda conn, limit: content_safety.sweep(
                    conn,
                    min(limit, 100),
                    timeout=config.avatar_review_timeout,
                    policy=config.avatar_review_on_timeout,
                    audit=writer,
                ),
                # Often enough that an avatar is settled soon after its timeout.
                every=min(config.prune_interval, max(0.5, config.avatar_review_timeout / 4)),
            ),
            name="avatar-review-sweep",
        ),
    ]
    client = None
    if config.redis_url:
        # Its own client: a blocking XREADGROUP must not hold a connection the revocations need.
        client = aioredis.Redis.from_url(
            config.redis_url, **config.redis_options(), socket_timeout=10, socket_connect_timeout=2
        )
        drain = AuditStreamDrain(client, RedisKeys(config.key_prefix), writer, f"{socket.gethostname()}-{os.getpid()}")
        tasks.append(asyncio.create_task(drain.run(), name="audit-stream-drain"))
    yield
    for task in reversed(tasks):
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await writer.flush()
    if client is not None:
        await client.aclose()
