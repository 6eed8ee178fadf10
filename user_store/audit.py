"""The audit log: events written to ``audit_events`` in batches, so no login pays a round trip of its own.

``AuditWriter.record`` (called where an event happens: logins, profile and password changes, revocations and
logouts) puts one event on a bounded in-process queue and returns at once; a background task inserts the queue
with one multi-row INSERT every ``AUDIT_FLUSH_INTERVAL`` seconds or ``AUDIT_BATCH_SIZE`` events. A full queue drops
the event (``minidoor_user_store_audit_dropped`` and a warning) rather than making a login wait. The request id and
the client IP come from the request's log context (``user_store/middleware.py``).

Processes without a database publish ``AuditEvent`` on ``RedisKeys.audit_stream`` (``shared/audit.py``); each user store
drains it in one consumer group into the same writer and XACKs an entry once its row is committed. Rows older than
``AUDIT_RETENTION_DAYS`` are deleted at start and every hour, in bounded batches. The admin CLI inserts its own
events directly (``insert_events``). Never a secret in a row: details carry field names and counts, not values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog

from shared.errors import BadRequest, Unavailable
from shared.messages import STREAM_FIELD, AuditEvent, audit_decoder
from shared.redis_keys import RedisKeys
from user_store.db import Conn, Pool, connection
from user_store.queries.audit import event_rows
from user_store.queries.audit import insert_events as insert_events  # the admin CLI's way in

if TYPE_CHECKING:
    from user_store.metrics import UserStoreMetrics

log = structlog.get_logger()

#: A stream entry pending this long with a consumer (a store that died before its XACK) is claimed by another.
_CLAIM_IDLE_MS = 30_000

_json_encoder = msgspec.json.Encoder()


def event_from_context(action: str, **fields: Any) -> AuditEvent:
    """An event stamped now, with the request id and client IP of the current request's log context."""
    ctx = structlog.contextvars.get_contextvars()
    return AuditEvent(
        action=action,
        at=time.time(),
        request_id=str(ctx.get("request_id", "")),
        client_ip=str(ctx.get("client_ip", "")),
        **fields,
    )


_Item = tuple[AuditEvent, "asyncio.Future[None] | None"]
_Entry = tuple[bytes, dict[bytes, bytes]]
#: Redis away, or PostgreSQL: the writer fails a batch it could not write with ``Unavailable``.
_DRAIN_ERRORS: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError, TimeoutError, Unavailable)


class AuditWriter:
    """The batching writer; ``run`` is its background task, ``flush`` writes what is left once it is cancelled."""

    def __init__(
        self,
        pool: Pool,
        metrics: UserStoreMetrics,
        *,
        flush_interval: float = 0.2,
        batch_size: int = 500,
        queue_size: int = 10_000,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._interval = flush_interval
        self._batch_size = batch_size
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        #: What ``run`` has taken off the queue and not yet committed; ``flush`` writes it if ``run`` was cancelled.
        self._batch: list[_Item] = []

    def record(self, action: str, **fields: Any) -> None:
        """Queue an event of the current request; never waits, never raises (a full queue drops it)."""
        self.add(event_from_context(action, **fields))

    def add(self, event: AuditEvent) -> bool:
        try:
            self._queue.put_nowait((event, None))
        except asyncio.QueueFull:
            self._metrics.audit_dropped.labels("queue_full").inc()
            log.warning("audit_event_dropped", reason="queue_full", action=event.action)
            return False
        return True

    async def add_and_wait(self, events: Iterable[AuditEvent]) -> None:
        """Queue ``events`` (waiting for room: the stream drain may wait, a request may not) and return once they
        are committed; raises what the insert raised."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for event in events:
            fut: asyncio.Future[None] = loop.create_future()
            await self._queue.put((event, fut))
            futures.append(fut)
        if futures:
            await asyncio.gather(*futures)

    async def run(self) -> None:
        while True:
            self._batch.append(await self._queue.get())
            deadline = time.monotonic() + self._interval
            while len(self._batch) < self._batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    # Not wait_for: on Python 3.11 it swallows a cancel that lands as an event arrives, and the
                    # shutdown then waits on this loop forever.
                    async with asyncio.timeout(remaining):
                        self._batch.append(await self._queue.get())
                except TimeoutError:
                    break
            await self._flush(self._batch)
            self._batch = []

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            async with connection(self._pool) as conn:
                await insert_events(conn, [event for event, _ in batch])
        except Unavailable as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            self._fail(batch, exc)
            log.exception("audit_insert_failed")
            return
        self._metrics.audit_written.inc(len(batch))
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        lost = sum(1 for _, fut in batch if fut is None)
        if lost:
            self._metrics.audit_dropped.labels("insert_failed").inc(lost)
        log.warning("audit_events_not_written", error=f"{type(exc).__name__}: {exc}", count=len(batch), lost=lost)
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def flush(self) -> None:
        """Insert everything taken or queued now: at shutdown, once ``run`` is cancelled."""
        if self._batch:
            batch, self._batch = self._batch, []
            await self._flush(batch)
        while not self._queue.empty():
            batch = [self._queue.get_nowait() for _ in range(min(self._batch_size, self._queue.qsize()))]
            await self._flush(batch)


class AuditStreamDrain:
    """Moves ``RedisKeys.audit_stream`` into the writer as consumer ``consumer`` of ``RedisKeys.audit_group``."""

    def __init__(self, redis: aioredis.Redis, redis_keys: RedisKeys, writer: AuditWriter, consumer: str) -> None:
        self._redis = redis
        self._redis_keys = redis_keys
        self._writer = writer
        self._consumer = consumer
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(
                self._redis_keys.audit_stream, self._redis_keys.audit_group, id="0", mkstream=True
            )
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def drain_once(self, *, block_ms: int = 1000, count: int = 500) -> int:
        """Claim entries left by a dead store, read new ones (blocking up to ``block_ms``), write, then XACK them;
        returns how many entries were handled."""
        await self._ensure_group()
        stream, group = self._redis_keys.audit_stream, self._redis_keys.audit_group
        claimed = await self._redis.xautoclaim(stream, group, self._consumer, _CLAIM_IDLE_MS, count=count)
        # An entry trimmed away while pending comes back with no fields: nothing to write, only to acknowledge.
        entries = cast(list[_Entry], claimed[1])
        if not entries:
            read = await self._redis.xreadgroup(group, self._consumer, {stream: ">"}, count=count, block=block_ms)
            entries = cast(list[tuple[bytes, list[_Entry]]], read)[0][1] if read else []
        if not entries:
            return 0
        events: list[AuditEvent] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                events.append(audit_decoder.decode(fields[STREAM_FIELD]))
            except (KeyError, msgspec.DecodeError):
                log.warning("audit_stream_entry_skipped", entry_id=entry_id.decode(), reason="undecodable")
        await self._writer.add_and_wait(events)
        await self._redis.xack(stream, group, *[entry_id for entry_id, _ in entries])
        return len(entries)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.drain_once()
                backoff = 0.5
            except _DRAIN_ERRORS as exc:
                # Redis or PostgreSQL away: the entries stay pending and are read again (XAUTOCLAIM) when they return.
                log.warning("audit_stream_drain_failed", error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
                self._group_ready = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:
                # A batch the database refused (the writer logged why): retried after the claim delay, not in a loop.
                log.exception("audit_stream_drain_error")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def parse_since(value: str) -> datetime:
    """An ISO 8601 time (``2026-12-01T00:00Z``, ``2026-12-01``); without an offset it is UTC."""
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("SINCE {value!r} is not an ISO 8601 time, e.g. 2026-12-01T00:00Z", value=value) from None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


async def read_events(conn: Conn, *, organization: str = "", since: datetime | None = None) -> AsyncIterator[bytes]:
    """Each matching event as one JSON line, oldest first; read through a cursor (call inside a transaction)."""
    async for row in event_rows(conn, organization=organization, since=since):
        line = {k: ("" if v is None else v) for k, v in row.items()}
        line["details"] = msgspec.Raw(row["details"].encode())  # already JSON: embedded as it is
        yield _json_encoder.encode(line) + b"\n"
