"""``create_app(config)``: the user store as an aiohttp application. No I/O until the app starts."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from shared.config import UserStoreConfig
from shared.guard import harden, input_guard
from user_store.appkeys import CONFIG, METRICS, PASSWORD_HASHING, PG_POOL, RULES
from user_store.db import create_pool
from user_store.lifecycle import audit_ctx, revocations_ctx, signing_keys_ctx
from user_store.metrics import UserStoreMetrics, metrics_middleware
from user_store.middleware import error_middleware, internal_auth_middleware
from user_store.migrate import apply_migrations
from user_store.routes import setup_routes
from user_store.user_rules import UserRules
from user_store.users import PasswordHashing


def create_app(config: UserStoreConfig, *, connect_tries: int = 10) -> web.Application:
    """The user store; its pool, migrations and signing keys come up in ``cleanup_ctx`` when it starts."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, input_guard, internal_auth_middleware],
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
        yield
        await pool.close()

    async def password_hashing(app: web.Application) -> AsyncIterator[None]:
        hashing = PasswordHashing(config.password_hash_concurrency)
        app[PASSWORD_HASHING] = hashing
        yield
        hashing.close()

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(password_hashing)
    app.cleanup_ctx.append(revocations_ctx)
    app.cleanup_ctx.append(signing_keys_ctx)
    app.cleanup_ctx.append(audit_ctx)
    setup_routes(app)
    harden(app, config.body_read_timeout)
    return app
