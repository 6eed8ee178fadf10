"""Process start-up helpers shared by every ``__main__``."""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import os
import sys
from typing import Any

import structlog
from aiohttp import web

from shared.tls import TLSRefused

log = structlog.get_logger()

#: How long past its own timeouts a shutdown may run before it is reported as stuck.
SHUTDOWN_SLACK = 15.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it is a dependency), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without a uvloop wheel
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def pending_tasks() -> list[str]:
    """Every unfinished task of the running loop and the chain of awaits it is suspended in, innermost last:
    for a log line when a shutdown does not finish."""
    described = []
    for task in asyncio.all_tasks():
        chain: list[str] = []
        awaited: object = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_qualname} ({frame.f_code.co_filename}:{frame.f_lineno})")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        described.append(f"{task.get_name()}: " + " > ".join(chain or ["?"]))
    return described


def _shutdown_overran(program: str) -> None:
    log.error("shutdown_overran", service=program, tasks=pending_tasks())
    sys.stderr.flush()  # where the logs go; os._exit skips the flush at exit
    os._exit(1)


def arm_shutdown_watchdog(loop: asyncio.AbstractEventLoop, program: str, overrun: float) -> None:
    """Should a shutdown still run ``overrun`` seconds from now: a log line naming every unfinished task and where
    it waits, then exit 1. A stuck stop must explain itself, not hang a rollout. The backstop for a loop too
    blocked to run that timer: every thread's stack on stderr, then exit."""
    loop.call_later(overrun, _shutdown_overran, program)
    faulthandler.dump_traceback_later(overrun + 5, exit=True)


def serve(
    app: web.Application,
    *,
    program: str,
    host: str,
    port: int,
    port_variable: str,
    shutdown_timeout: float,
    **options: Any,
) -> None:
    """``web.run_app`` on ``host:port`` with the shutdown watchdog; a port already taken ends the process with one
    line naming the variable to change and exit code 1, not a traceback."""

    async def watch_shutdown(app: web.Application) -> None:
        # aiohttp waits up to shutdown_timeout for handlers, then as long again for the cancelled ones.
        arm_shutdown_watchdog(asyncio.get_running_loop(), program, 2 * shutdown_timeout + SHUTDOWN_SLACK)

    app.on_shutdown.append(watch_shutdown)
    try:
        web.run_app(app, host=host, port=port, print=None, shutdown_timeout=shutdown_timeout, **options)
    except TLSRefused as exc:
        print(f"{program}: {exc.description}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"{program}: cannot listen on {host}:{port}, it is in use: set {port_variable} to a free port",
            file=sys.stderr,
        )
        sys.exit(1)
