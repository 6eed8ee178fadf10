"""Liveness and readiness, for orchestrators: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from shared.errors import Unavailable
from user_store.appkeys import PG_POOL
from user_store.http import json_response

_READY_TIMEOUT = 1.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers ``SELECT 1`` within a second."""
    try:
        async with asyncio.timeout(_READY_TIMEOUT), request.app[PG_POOL].acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # whatever stops SELECT 1 (timeout, lost server, closing pool) means "not ready"
        raise Unavailable("the database is not ready ({kind})", kind=type(exc).__name__, retry_after=1) from None
    return json_response({"status": "ok"})
