"""Tables that only grow unless something deletes from them: the audit log past its retention and token rows past
their last expiry. One loop per table, in the background of every user store: the deletes are idempotent and go in
small batches, so several replicas pruning at once only share the work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from shared.errors import Unavailable
from user_store.db import Conn, Pool, connection

log = structlog.get_logger()

#: Rows per DELETE: short statements, so a prune never holds locks a login waits on for long.
PRUNE_BATCH = 5000

#: Deletes at most ``limit`` rows, returns how many went.
DeleteBatch = Callable[[Conn, int], Awaitable[int]]


async def prune(pool: Pool, delete: DeleteBatch, *, batch: int = PRUNE_BATCH) -> int:
    """Run ``delete`` until a batch comes back short; returns how many rows went in all."""
    total = 0
    while True:
        async with connection(pool) as conn:
            deleted = await delete(conn, batch)
        total += deleted
        if deleted < batch:
            return total


async def prune_forever(pool: Pool, table: str, delete: DeleteBatch, *, every: float) -> None:
    """Prune at start, then every ``every`` seconds; an unreachable database is logged and tried next time."""
    while True:
        try:
            deleted = await prune(pool, delete)
            if deleted:
                log.info("rows_pruned", table=table, count=deleted)
        except Unavailable as exc:
            log.warning("prune_failed", table=table, error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(every)
