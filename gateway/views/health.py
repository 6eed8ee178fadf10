"""Liveness and readiness, for orchestrators: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

import asyncio
import ssl

import redis.asyncio as aioredis
from aiohttp import web

from gateway import appkeys

#: Seconds each dependency gets to answer a readiness probe (the probes' timeoutSeconds is 2).
_READY_TIMEOUT = 1.0


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def _redis_reason(redis: aioredis.Redis) -> str | None:
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            await redis.ping()
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        refused = _tls_refusal(exc)
        if refused:
            return f"Redis's TLS handshake failed ({refused}): check REDIS_TLS_CA_FILE and the host name"
        return f"Redis did not answer ({type(exc).__name__})"
    return None


def _tls_refusal(exc: BaseException) -> str:
    """Why TLS refused, when an SSL error is behind ``exc`` (redis-py wraps it, or keeps only its text): the one cause
    an operator cannot guess from the exception's type. Other errors name only their type, since the body is public
    and their text names internal hosts."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or "TLS error")
        seen = seen.__cause__ or seen.__context__
    return "certificate verify failed" if "certificate verify failed" in str(exc) else ""


async def readyz(request: web.Request) -> web.Response:
    """Ready while a login can be served: Redis answers PING and the user store's ``/readyz`` answers 200.

    Otherwise 503 with ``{"status": "unavailable", "reasons": {"redis": ..., "user_store": ...}}`` naming what
    is missing, so a load balancer stops routing here and an operator sees why.
    """
    app = request.app
    redis_reason, store_reason = await asyncio.gather(
        _redis_reason(app[appkeys.REDIS]), app[appkeys.USER_STORE].ready(_READY_TIMEOUT)
    )
    reasons = {name: why for name, why in (("redis", redis_reason), ("user_store", store_reason)) if why}
    if reasons:
        return web.json_response({"status": "unavailable", "reasons": reasons}, status=503)
    return web.json_response({"status": "ok"})
