"""The gateway's Prometheus metrics (``GET /metrics``), in a registry per app so several apps can share a process.

Requests and logins are counted by a middleware; the job stream's length, pending count and queueing delay are read
from Redis when ``/metrics`` is scraped.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway import appkeys
from shared.guard import internal_only
from shared.middleware import route_of
from shared.redis_keys import RedisKeys

LOGIN_PATH = "/api/login/oauth/access_token"
#: Seconds; a login has LOGIN_TIMEOUT (10 s by default) end to end.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
_SCRAPE_TIMEOUT = 1.0


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "minidoor_gateway_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "minidoor_gateway_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.logins = Counter(
            "minidoor_gateway_logins",
            "Mini-program logins by outcome: token or the OAuth error",
            ["outcome"],
            registry=r,
        )
        self.login_seconds = Histogram(
            "minidoor_gateway_login_duration_seconds",
            "Login latency as the client sees it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "minidoor_gateway_shed_logins",
            "Logins refused with 503 before queueing: queue_full, queue_slow, redis_unreachable",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "minidoor_gateway_rate_limited", "Requests refused with 429 by a rate limit", ["limit"], registry=r
        )
        self.introspections = Counter(
            "minidoor_gateway_introspections",
            "Introspections by who answered: the gateway alone, or the user store",
            ["answered_by"],
            registry=r,
        )
        self.stream_length = Gauge("minidoor_stream_length", "Jobs in the code-exchange stream", registry=r)
        self.stream_pending = Gauge(
            "minidoor_stream_pending", "Jobs taken by a worker, not yet acknowledged", registry=r
        )
        self.stream_wait = Gauge(
            "minidoor_stream_oldest_waiting_seconds", "Age of the oldest job no worker has taken yet", registry=r
        )
        self.waiting_replies = Gauge(
            "minidoor_gateway_waiting_replies", "Logins of this gateway waiting for a worker", registry=r
        )


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request; sits inside ``request_log`` and outside the error middleware."""
    start = time.perf_counter()
    resp = await handler(request)
    seconds = time.perf_counter() - start
    metrics = request.app[appkeys.METRICS]
    route = route_of(request)
    metrics.requests.labels(route, str(resp.status)).inc()
    metrics.request_seconds.labels(route).observe(seconds)
    if request.path == LOGIN_PATH and request.get(appkeys.TOKEN_GRANT) != "refresh_token":
        error = structlog.contextvars.get_contextvars().get("outcome", "server_error")
        metrics.logins.labels("token" if resp.status == 200 else str(error)).inc()
        metrics.login_seconds.observe(seconds)
    return resp


async def metrics_view(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format, for a scraper holding the internal credential only."""
    internal_only(request, request.app[appkeys.CONFIG].internal_token)
    app = request.app
    metrics = app[appkeys.METRICS]
    metrics.waiting_replies.set(app[appkeys.REPLIES].waiting)
    try:
        async with asyncio.timeout(_SCRAPE_TIMEOUT):
            await observe_stream(metrics, app[appkeys.REDIS], app[appkeys.REDIS_KEYS])
    except (aioredis.RedisError, OSError, TimeoutError):
        pass  # the gauges keep their last values; /readyz reports Redis trouble
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def observe_stream(metrics: GatewayMetrics, redis: aioredis.Redis, redis_keys: RedisKeys) -> None:
    metrics.stream_length.set(await redis.xlen(redis_keys.job_stream))
    last_delivered = b"0-0"
    pending = 0
    try:
        for group in await redis.xinfo_groups(redis_keys.job_stream):
            if group["name"] == redis_keys.worker_group.encode():
                last_delivered, pending = group["last-delivered-id"], group["pending"]
    except aioredis.ResponseError:
        pass  # no stream yet
    metrics.stream_pending.set(pending)
    waited = 0.0
    entries = cast(list[tuple[bytes, object]], await redis.xrange(redis_keys.job_stream, min=last_delivered, count=2))
    for entry_id, _fields in entries:
        if entry_id != last_delivered:
            waited = max(0.0, time.time() - int(entry_id.split(b"-", 1)[0]) / 1000)
            break
    metrics.stream_wait.set(waited)
