"""Process start-up helpers shared by every ``__main__``."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (it is a dependency), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without a uvloop wheel
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
