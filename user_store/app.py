"""``create_app(config)``: the user store as an aiohttp application. No I/O until the app starts."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from shared.config import UserStoreConfig
from user_store.db import create_pool
from user_store.keys import CONFIG, PG_POOL, SIGNER
from user_store.middleware import error_middleware, internal_auth_middleware
from user_store.migrate import apply_migrations
from user_store.routes import setup_routes
from user_store.signing import load_signer


def create_app(config: UserStoreConfig, *, connect_tries: int = 10) -> web.Application:
    """The user store; its pool, migrations and signing keys come up in ``cleanup_ctx`` when it starts."""
    app = web.Application(
        middlewares=[error_middleware, internal_auth_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config

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

    async def signing_keys(app: web.Application) -> AsyncIterator[None]:
        async with app[PG_POOL].acquire() as conn:
            app[SIGNER] = await load_signer(conn, config.issuer)
        yield

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(signing_keys)
    setup_routes(app)
    return app
