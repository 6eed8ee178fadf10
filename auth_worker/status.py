"""The worker's small HTTP port (``WORKER_HTTP_PORT``): ``/healthz``, ``/readyz`` and Prometheus ``/metrics``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from auth_worker.worker import Worker

#: The consumer loop turns at least once a second; this long without a turn means it is stuck.
_STUCK_AFTER = 15.0
#: Without a successful read of the stream for this long, Redis is not reachable for us.
_UNREADY_AFTER = 5.0

_WORKER: web.AppKey[Worker] = web.AppKey("worker")


async def start_status_server(worker: Worker, host: str, port: int) -> web.AppRunner:
    app = web.Application()
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
    body = generate_latest(request.app[_WORKER].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
