"""Audit events from processes without a database (the gateway, the auth workers): fire-and-forget onto a stream.

The rate limiter publishes its trips this way (``shared/ratelimit.py``, once per limit, key and period)::

    publisher = AuditPublisher(redis, RedisKeys(config.key_prefix))   # once per process, next to its Redis client
    publisher.publish(AuditEvent(action="rate_limited", outcome="denied", client_id=..., client_ip=...,
                                 request_id=..., details={"limit": "token_ip", "window_s": 60}))
    ...
    await publisher.close()                                       # at shutdown: waits briefly for what is in flight

``publish`` never raises and never waits: it starts one XADD (``MAXLEN ~``) in the background and returns. At most
``max_pending`` XADDs are in flight; beyond that, and whenever Redis fails, the event is dropped and counted in
``dropped`` with a warning log, so hostile traffic cannot make the audit trail cost the requests it audits. The user
stores drain ``RedisKeys.audit_stream`` into ``audit_events`` (``user_store/audit.py``).
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog

from shared.messages import STREAM_FIELD, AuditEvent, encoder
from shared.redis_keys import RedisKeys

log = structlog.get_logger()


class AuditPublisher:
    def __init__(
        self,
        redis: aioredis.Redis,
        redis_keys: RedisKeys,
        *,
        max_len: int = 100_000,
        max_pending: int = 1000,
        timeout: float = 1.0,
    ) -> None:
        self._redis = redis
        self._redis_keys = redis_keys
        self._max_len = max_len
        self._max_pending = max_pending
        self._timeout = timeout
        self._pending: set[asyncio.Task[None]] = set()
        #: Events lost to a full backlog or a Redis error since the process started.
        self.dropped = 0

    def publish(self, event: AuditEvent) -> bool:
        """Queue ``event`` for the stream; False if it was dropped at once (too many in flight)."""
        if len(self._pending) >= self._max_pending:
            self._drop("backlog_full", event)
            return False
        task = asyncio.create_task(self._send(event), name="audit-publish")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _send(self, event: AuditEvent) -> None:
        try:
            await asyncio.wait_for(
                self._redis.xadd(
                    self._redis_keys.audit_stream,
                    {STREAM_FIELD: encoder.encode(event)},
                    maxlen=self._max_len,
                    approximate=True,
                ),
                self._timeout,
            )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self._drop(type(exc).__name__, event)

    def _drop(self, reason: str, event: AuditEvent) -> None:
        self.dropped += 1
        log.warning("audit_event_dropped", reason=reason, action=event.action, dropped=self.dropped)

    async def close(self, timeout: float = 1.0) -> None:
        """Wait up to ``timeout`` seconds for the XADDs in flight, then cancel the rest."""
        if not self._pending:
            return
        _done, late = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task
