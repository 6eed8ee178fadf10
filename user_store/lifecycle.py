"""``cleanup_ctx`` entries behind token validation: the Redis client that broadcasts revocations, and the signing
keys with the task that re-reads them (rotation and retirement without a restart)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from shared.keys import Keys
from user_store.keycrypto import load_master_key
from user_store.keyring import KeyLoader, KeyReloader, prepare_keys
from user_store.keys import CONFIG, MASTER_KEY, PG_POOL, REVOCATIONS, SIGNER
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
    app[REVOCATIONS] = Revocations(client, Keys(config.key_prefix))
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
