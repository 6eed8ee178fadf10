"""The unit every CPU figure is counted in: a trivial aiohttp JSON endpoint in two processes on one port
(``SO_REUSEPORT``), on uvloop, as the gateway runs. It reads the form and answers a constant JSON body: the same
framework, event loop and encoder as minidoor's services, and none of their work.

``python -m services.bench.unit PORT`` runs one process; ``unit_server()`` runs the two for a measurement.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import msgspec
from aiohttp import web

from services.bench.cpu import Processes
from services.bench.harness import BenchContext, measure, scenario
from services.bench.results import Scenario, key
from services.bench.servers import servers
from services.bench.wrk import Load, write_bodies
from services.ports import free_port
from shared.runtime import new_event_loop

PROCESSES = 2
PATH = "/unit"
BODY = "token=unit&token_type_hint=access_token"
EXPECT = '"active":true'
_ANSWER = msgspec.json.encode({"active": True})


async def unit(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(body=_ANSWER, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b"{}", content_type="application/json")


@dataclass(frozen=True, slots=True)
class UnitServer:
    url: str
    pids: list[int]


@contextmanager
def unit_server() -> Iterator[UnitServer]:
    """The unit's processes on a free port, all listening; ``url`` is the endpoint's."""
    port = free_port()
    command = [sys.executable, "-m", "services.bench.unit", str(port)]
    with servers([command] * PROCESSES) as pids:
        yield UnitServer(f"http://127.0.0.1:{port}{PATH}", pids)


async def unit_scenario(ctx: BenchContext) -> Scenario:
    """The unit under wrk at ``ctx.unit_connections``; sets ``ctx.unit_ms``, which every later figure is counted in."""
    bodies = write_bodies(ctx.scratch / "unit.txt", [BODY])
    with unit_server() as server:
        load = Load(server.url, bodies, ctx.unit_connections, ctx.duration, EXPECT)
        window = await measure(load, Processes({"unit": server.pids}), warmup=ctx.warmup)
    ctx.unit_ms = 1000 * window.cpu["unit"] / max(window.report.succeeded, 1)
    return scenario(
        window,
        ctx.unit_ms,
        key=key("unit", "unit"),
        system="unit",
        kind="unit",
        label=f"unit: aiohttp JSON endpoint, {PROCESSES} processes, uvloop",
        connections=ctx.unit_connections,
    )


def main() -> None:
    app = web.Application()
    app.router.add_post(PATH, unit)
    app.router.add_get("/healthz", healthz)
    port = int(sys.argv[1])

    def listening(_message: str) -> None:
        print(f"listening on {port}", flush=True)

    web.run_app(
        app, host="127.0.0.1", port=port, reuse_port=True, print=listening, access_log=None, loop=new_event_loop()
    )


if __name__ == "__main__":
    main()
