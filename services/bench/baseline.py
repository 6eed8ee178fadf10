"""``python -m services.bench.baseline PORT``: the HTTP baseline, an aiohttp endpoint that reads a form and answers a
constant introspection or token. Same framework, event loop and JSON encoder as the gateway; none of its work.

``baseline_server()`` runs it as a child process for the duration of a measurement."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import msgspec
from aiohttp import web

from services.ports import free_port
from shared.runtime import new_event_loop

_BODY = msgspec.json.encode({"active": True})
_TOKEN = msgspec.json.encode({"access_token": "baseline", "token_type": "Bearer", "expires_in": 7200})


async def introspect(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(body=_BODY, content_type="application/json")


async def access_token(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(body=_TOKEN, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b"{}", content_type="application/json")


@dataclass(frozen=True, slots=True)
class BaselineServer:
    url: str
    pid: int


@contextmanager
def baseline_server() -> Iterator[BaselineServer]:
    """The baseline on a free port, started and ready; ``url`` has no trailing slash."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "services.bench.baseline", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the baseline server did not start") from None
                time.sleep(0.1)
        yield BaselineServer(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    app = web.Application()
    app.router.add_post("/introspect", introspect)
    app.router.add_post("/api/login/oauth/access_token", access_token)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
