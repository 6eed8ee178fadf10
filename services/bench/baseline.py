"""``python -m services.bench.baseline PORT``: the HTTP baseline, an aiohttp endpoint that reads a form and answers a
constant introspection. Same framework, event loop and JSON encoder as the gateway; none of its work."""

from __future__ import annotations

import sys

import msgspec
from aiohttp import web

from shared.runtime import new_event_loop

_BODY = msgspec.json.encode({"active": True})


async def introspect(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(body=_BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b"{}", content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/introspect", introspect)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
