"""``cleanup_ctx`` entries behind token validation: the Redis client that broadcasts revocations, and the signing
keys with the task that re-reads them (rotation and retirement without a restart); and the audit log's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from shared.redis_keys import RedisKeys
from user_store.appkeys import AUDIT, CONFIG, MASTER_KEY, METRICS, PG_POOL, REVOCATIONS, SIGNER
from user_store.audit import AuditStreamDrain, AuditWriter, prune_forever
from user_store.keycrypto import load_master_key
from user_store.keyring import KeyLoader, KeyReloader, prepare_keys
from user_store.provider_secrets import prepare_provider_secrets
from user_store.revocations import Revocations
from user_store.session_keys import prepare_session_keys
from user_store.signing import Signer


async def revocations_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # No connect at start: like the gateway, the store comes up while Redis is away; revocations then answer 503.
    client = (
        aioredis.Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=2)
        if config.redis_url
        else None
    )
    app[REVOCATIONS] = Revocations(client, RedisKeys(config.key_prefix))
    yield
    if client is not None:
        await client.aclose()


async def signing_keys_ctx(app: web.Application) -> AsyncIterator[None]:
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


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
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
        asyncio.create_task(prune_forever(pool, config.audit_retention_days), name="audit-prune"),
    ]
    client = None
    if config.redis_url:
        # Its own client: a blocking XREADGROUP must not hold a connection the revocations need.
        client = aioredis.Redis.from_url(config.redis_url, socket_timeout=10, socket_connect_timeout=2)
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
