"""The worker's small HTTP port (``WORKER_HTTP_PORT``): ``/healthz``, ``/readyz`` and Prometheus ``/metrics``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.errors import MinidoorError
from shared.guard import harden, input_guard, internal_only

if TYPE_CHECKING:
    from auth_worker.worker import Worker

#: The consumer loop turns at least once a second; this long without a turn means it is stuck.
_STUCK_AFTER = 15.0
#: Without a successful read of the stream for this long, Redis is not reachable for us.
_UNREADY_AFTER = 5.0

_WORKER: web.AppKey[Worker] = web.AppKey("worker")
#: Its routes take no body at all.
_MAX_BODY = 1024
log = structlog.get_logger()


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as a short JSON answer with its 4xx; nothing a client sends makes this port answer 500."""
    try:
        return await handler(request)
    except MinidoorError as exc:
        return web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": "invalid_request", "error_description": exc.reason}, status=exc.status)
    except Exception:
        log.exception("status_port_error")
        return web.json_response({"error": "server_error", "error_description": "internal error"}, status=500)


async def start_status_server(worker: Worker, host: str, port: int) -> web.AppRunner:
    app = web.Application(middlewares=[_errors, input_guard], client_max_size=_MAX_BODY)
    harden(app, worker.config.body_read_timeout)
    app[_WORKER] = worker
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    # Its answers are instant: a stop never waits on a client of this port (aiohttp's default is 60 s).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def _state(worker: Worker, ok: bool) -> web.Response:
    body = {"status": "ok" if ok else "unavailable", "worker": worker.name, "in_flight": worker.in_flight}
    return web.json_response(body, status=200 if ok else 503)


async def _healthz(request: web.Request) -> web.Response:
    """Alive: the consumer loop keeps turning."""
    worker = request.app[_WORKER]
    return _state(worker, time.monotonic() - worker.last_turn < _STUCK_AFTER)


async def _readyz(request: web.Request) -> web.Response:
    """Ready: the stream was read recently, so Redis answers."""
    worker = request.app[_WORKER]
    return _state(worker, time.monotonic() - worker.last_read < _UNREADY_AFTER)


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for a scraper holding the internal credential only."""
    internal_only(request, request.app[_WORKER].config.internal_token)
    body = generate_latest(request.app[_WORKER].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
