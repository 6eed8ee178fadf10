"""Publishing a code-exchange job and waiting for its reply, under one deadline.

Load shedding: a job is published only if the queue can still serve it in time. The stream is bounded
(``STREAM_MAX_LEN``), and when the oldest job no worker has picked up yet has waited more than half a login's
deadline, the workers are not keeping up: new logins get 503 + ``Retry-After`` at once, instead of joining a
queue that would answer them with a 504 after the whole deadline. Both checks and the XADD are one Lua script
(``shared/redis_scripts.py``: ``PUBLISH``).

Exactly-once: a final answer names its code's exchange record; the gateway marks the record delivered just before
handing the answer to its client (``MARK_DELIVERED``; the protocol is in ``shared/redis_scripts.py``).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis
import structlog

from gateway.metrics import GatewayMetrics
from gateway.replies import ReplyWaiter
from shared import redis_scripts
from shared.config import MAX_LOGIN_TIMEOUT
from shared.errors import DeadlineExceeded, Unavailable
from shared.messages import STREAM_FIELD, CodeExchangeJob, Reply, encoder
from shared.redis_keys import RedisKeys

log = structlog.get_logger()

#: Share of a login's deadline the oldest waiting job may have waited before new logins are shed.
MAX_QUEUE_WAIT_SHARE = 0.5

#: How long a delivered answer stays for jobs published before the delivery: beyond the longest login timeout any
#: gateway may have, a margin for clocks and event-loop lag.
_KEEP_DELIVERED_ANSWER = MAX_LOGIN_TIMEOUT + 5.0
#: Marking is best effort: a login that got its answer is not failed because Redis went away a moment later.
_MARK_TIMEOUT = 0.5


class JobPublisher:
    def __init__(
        self,
        redis: aioredis.Redis,
        redis_keys: RedisKeys,
        replies: ReplyWaiter,
        max_len: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._redis_keys = redis_keys
        self._replies = replies
        self._max_len = max_len
        self._metrics = metrics or GatewayMetrics()
        self._publish = redis.register_script(redis_scripts.PUBLISH)
        self._mark_delivered = redis.register_script(redis_scripts.MARK_DELIVERED)

    async def exchange(
        self,
        *,
        request_id: str,
        client_id: str,
        code: str,
        username: str,
        avatar: str,
        timeout: float,
        client_ip: str = "",
    ) -> Reply:
        """Publish the job and wait for a worker's reply, at most ``timeout`` seconds in all."""
        job = CodeExchangeJob(
            job_id=uuid.uuid4().hex,
            request_id=request_id,
            client_id=client_id,
            code=code,
            username=username,
            avatar=avatar,
            client_ip=client_ip,
            reply_to=self._replies.stream,
            deadline=time.time() + timeout,
        )
        fut = self._replies.expect(job.job_id)
        try:
            await self._publish_job(job, timeout)
            try:
                async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                    reply = await fut
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no auth worker answered within {timeout:g}s; call wx.login() for a new code and try again",
                    retry_after=1,
                ) from None
        finally:
            self._replies.forget(job.job_id)
        if reply.record:
            await self._delivered(reply.record, keep=_KEEP_DELIVERED_ANSWER)
        return reply

    async def _delivered(self, record: str, *, keep: float) -> None:
        try:
            async with asyncio.timeout(_MARK_TIMEOUT):
                await self._mark_delivered(
                    keys=[record, RedisKeys.delivered_answer(record), self._redis_keys.job_stream],
                    args=[int(keep * 1000)],
                )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            # Unmarked, a replay of this code within the record's TTL gets this same answer, never a new token.
            log.warning("delivery_unmarked", error=f"{type(exc).__name__}: {exc}")

    async def _publish_job(self, job: CodeExchangeJob, timeout: float) -> None:
        max_wait_ms = int(timeout * MAX_QUEUE_WAIT_SHARE * 1000)
        try:
            result = await self._publish(
                keys=[self._redis_keys.job_stream],
                args=[self._max_len, self._redis_keys.worker_group, max_wait_ms, STREAM_FIELD, encoder.encode(job)],
            )
        except (aioredis.RedisError, OSError) as exc:
            self._metrics.shed.labels("redis_unreachable").inc()
            raise Unavailable(f"the login queue is unreachable ({type(exc).__name__})", retry_after=1) from exc
        match result[0]:
            case b"full":
                self._metrics.shed.labels("queue_full").inc()
                raise Unavailable("too many logins are waiting; try again in a moment", retry_after=1)
            case b"slow":
                self._metrics.shed.labels("queue_slow").inc()
                retry_after = min(30, max(1, round(int(result[1]) / 1000)))
                raise Unavailable(
                    "logins are queueing longer than they can wait; try again in a moment", retry_after=retry_after
                )
