"""Waiting for auth-worker replies without polling per request.

Each gateway process owns one reply stream (its name carries a random id). One background task reads it with a
blocking XREAD and resolves the future registered for each job id. The reader starts at ID 0 of a stream nobody
else knows yet, so a reply that arrives before the first XREAD is never missed. Replies are deleted once read; the
TTL the workers set on every reply (``auth_worker/worker.py``) clears the stream of a gateway that died.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

import msgspec
import redis.asyncio as aioredis
import structlog

from shared.errors import MinidoorError
from shared.messages import STREAM_FIELD, LoginFailed, Reply, reply_decoder
from shared.redis_keys import RedisKeys
from shared.streamseal import StreamSeal, open_reply

log = structlog.get_logger()


class ReplyWaiter:
    def __init__(self, redis: aioredis.Redis, redis_keys: RedisKeys, seal: StreamSeal | None = None) -> None:
        self._redis = redis
        #: Opens the tokens workers seal (``STREAM_SEAL_KEY``): only the waiting request sees them in clear.
        self._seal = seal
        self.stream = redis_keys.reply_stream(uuid.uuid4().hex)
        self._futures: dict[str, asyncio.Future[Reply]] = {}
        self._last_id = b"0-0"
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reply-reader")

    async def stop(self) -> None:
        # Also a flag: redis-py can swallow the cancellation of a blocking XREAD (see ``Verifier.close``); the loop
        # sees the flag within its 1 s block.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for fut in self._futures.values():
            fut.cancel()
        try:
            await self._redis.delete(self.stream)
        except aioredis.RedisError:
            pass

    def expect(self, job_id: str) -> asyncio.Future[Reply]:
        """Register interest in ``job_id`` before its job is published; ``forget`` it when done."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._futures[job_id] = fut
        return fut

    def forget(self, job_id: str) -> None:
        self._futures.pop(job_id, None)

    @property
    def waiting(self) -> int:
        return len(self._futures)

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                batches = cast(
                    list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                    await self._redis.xread({self.stream: self._last_id}, count=1000, block=1000),
                )
                backoff = 0.1
            except (aioredis.RedisError, OSError) as exc:
                log.warning("reply_read_failed", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            for _stream, entries in batches:
                ids = [entry_id for entry_id, _ in entries]
                for _entry_id, fields in entries:
                    self._deliver(fields.get(STREAM_FIELD, b""))
                self._last_id = ids[-1]
                try:
                    await self._redis.xdel(self.stream, *ids)
                except aioredis.RedisError:
                    pass  # the stream's TTL clears leftovers

    def _deliver(self, payload: bytes) -> None:
        try:
            reply = reply_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            log.error("reply_undecodable", error=str(exc))
            return
        try:
            reply = open_reply(self._seal, reply)
        except MinidoorError as exc:
            log.error("reply_unopenable", job_id=reply.job_id, error=exc.description)
            reply = LoginFailed.of(reply.job_id, exc, record=reply.record)
        fut = self._futures.pop(reply.job_id, None)
        if fut is None:
            log.info("reply_unclaimed", job_id=reply.job_id)  # its request already timed out
        elif not fut.done():
            fut.set_result(reply)
