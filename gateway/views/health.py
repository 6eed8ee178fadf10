"""Liveness and readiness, for orchestrators: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from gateway import appkeys


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: Redis answers (the user store has its own /readyz)."""
    try:
        await request.app[appkeys.REDIS].ping()
    except (aioredis.RedisError, OSError) as exc:
        return web.json_response({"status": "unavailable", "redis": str(exc)}, status=503)
    return web.json_response({"status": "ok"})
