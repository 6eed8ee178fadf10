"""Publishing a code-exchange job and waiting for its reply, under one deadline."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis

from gateway.replies import ReplyWaiter
from shared.errors import DeadlineExceeded, Unavailable
from shared.keys import Keys
from shared.messages import STREAM_FIELD, CodeExchangeJob, Reply, encoder

# Add only while the stream is shorter than the cap: a full queue is refused, never silently trimmed.
_BOUNDED_XADD = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
"""


class JobPublisher:
    def __init__(self, redis: aioredis.Redis, keys: Keys, replies: ReplyWaiter, max_len: int) -> None:
        self._redis = redis
        self._keys = keys
        self._replies = replies
        self._max_len = max_len
        self._xadd = redis.register_script(_BOUNDED_XADD)

    async def exchange(
        self, *, request_id: str, client_id: str, code: str, username: str, avatar: str, timeout: float
    ) -> Reply:
        """Publish the job and wait for a worker's reply, at most ``timeout`` seconds in all."""
        job = CodeExchangeJob(
            job_id=uuid.uuid4().hex,
            request_id=request_id,
            client_id=client_id,
            code=code,
            username=username,
            avatar=avatar,
            reply_to=self._replies.stream,
            deadline=time.time() + timeout,
        )
        fut = self._replies.expect(job.job_id)
        try:
            try:
                added = await self._xadd(
                    keys=[self._keys.job_stream], args=[self._max_len, STREAM_FIELD, encoder.encode(job)]
                )
            except (aioredis.RedisError, OSError) as exc:
                raise Unavailable(f"the login queue is unreachable ({type(exc).__name__})", retry_after=1) from exc
            if added is None:
                raise Unavailable("too many logins are waiting; try again in a moment", retry_after=1)
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no auth worker answered within {timeout:g}s; call wx.login() for a new code and try again",
                    retry_after=1,
                ) from None
        finally:
            self._replies.forget(job.job_id)
