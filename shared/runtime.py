"""Process start-up helpers shared by every ``__main__``."""

from __future__ import annotations

import asyncio
import errno
import sys
from typing import Any

from aiohttp import web


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


def serve(app: web.Application, *, program: str, host: str, port: int, port_variable: str, **options: Any) -> None:
    """``web.run_app`` on ``host:port``; a port already taken ends the process with one line naming the variable to
    change and exit code 1, not a traceback."""
    try:
        web.run_app(app, host=host, port=port, print=None, **options)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"{program}: cannot listen on {host}:{port}, it is in use: set {port_variable} to a free port",
            file=sys.stderr,
        )
        sys.exit(1)
