"""Typed keys of the user store's application state."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from shared.config import UserStoreConfig
from user_store.signing import Signer

CONFIG = web.AppKey("config", UserStoreConfig)
PG_POOL: web.AppKey[asyncpg.Pool[asyncpg.Record]] = web.AppKey("pg_pool")
SIGNER = web.AppKey("signer", Signer)
