"""The user store's Prometheus metrics (``GET /metrics``), in a registry per app so several apps can share a process."""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from shared.guard import internal_only
from shared.middleware import route_of
from user_store.appkeys import CONFIG, METRICS

#: Seconds; one login's transaction should take milliseconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class UserStoreMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "minidoor_user_store_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "minidoor_user_store_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.logins = Counter(
            "minidoor_user_store_logins", "WeChat logins that minted a token, by user: created or returning",
            ["user"], registry=r,
        )  # fmt: skip
        self.audit_written = Counter(
            "minidoor_user_store_audit_written", "Audit events inserted into audit_events", registry=r
        )
        self.audit_dropped = Counter(
            "minidoor_user_store_audit_dropped", "Audit events lost, by reason: queue_full or insert_failed",
            ["reason"], registry=r,
        )  # fmt: skip


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request; outside the error middleware, so it sees the rendered error responses too."""
    start = time.perf_counter()
    resp = await handler(request)
    metrics = request.app[METRICS]
    route = route_of(request)
    metrics.requests.labels(route, str(resp.status)).inc()
    metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
    created = structlog.contextvars.get_contextvars().get("created")
    if resp.status == 200 and isinstance(created, bool):
        metrics.logins.labels("created" if created else "returning").inc()
    return resp


async def metrics_view(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format, for a scraper holding the internal credential only; the health
    routes stay open to probes."""
    internal_only(request, request.app[CONFIG].internal_token)
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
