"""The gateway's side of a login: publish its code-exchange job, wait for the worker's reply, mark it delivered.

A login's path: ``gateway/views/token.py`` (the route) -> ``JobPublisher.exchange`` here -> the job stream ->
``auth_worker/worker.py`` (read, claim, reply, acknowledge) -> ``auth_worker/login.py`` (exchange record, WeChat, user
store) -> the reply stream -> ``ReplyWaiter`` here -> ``JobPublisher`` marks the answer delivered -> the response. Every
Redis step is a script of ``shared/redis_scripts.py``, which also holds the protocol.

Load shedding: a job is published only if the queue can still serve it in time. The stream is bounded
(``STREAM_MAX_LEN``), and when the oldest job no worker has picked up yet has waited more than half a login's
deadline, the workers are not keeping up: new logins get 503 + ``Retry-After`` at once, instead of joining a
queue that would answer them with a 504 after the whole deadline. Both checks and the XADD are one Lua script
(``shared/redis_scripts.py``: ``PUBLISH``).

Exactly-once: a final answer names its code's exchange record; the gateway marks the record delivered just before
handing the answer to its client (``MARK_DELIVERED``).

Replies without polling per request: each gateway process owns one reply stream (its name carries a random id). One
background task, ``ReplyWaiter``, reads it with a blocking XREAD and resolves the future registered for each job id.
The reader starts at ID 0 of a stream nobody else knows yet, so a reply that arrives before the first XREAD is never
missed. Replies are deleted once read; the TTL the workers set on every reply clears the stream of a gateway that
died.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.typing import EncodableT

from gateway.metrics import GatewayMetrics
from shared import redis_scripts
from shared.config import MAX_LOGIN_TIMEOUT
from shared.errors import DeadlineExceeded, MinidoorError, Unavailable
from shared.messages import (
    STREAM_FIELD,
    CodeExchangeJob,
    ContentCheckJob,
    Job,
    LinkWechatJob,
    LoginFailed,
    PhoneLoginJob,
    Reply,
    encoder,
    reply_decoder,
)
from shared.redis_batch import RawConnection, RedisBatcher
from shared.redis_keys import RedisKeys
from shared.streamseal import StreamSeal, open_reply

log = structlog.get_logger()

#: Share of a login's deadline the oldest waiting job may have waited before new logins are shed.
MAX_QUEUE_WAIT_SHARE = 0.5

#: How long a delivered answer stays for jobs published before the delivery: beyond the longest login timeout any
#: gateway may have, a margin for clocks and event-loop lag.
_KEEP_DELIVERED_ANSWER = MAX_LOGIN_TIMEOUT + 5.0
#: The longest the reply reader's XREAD blocks: a stop is seen within it.
_READ_BLOCK_MS = 1000
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
        batcher: RedisBatcher | None = None,
    ) -> None:
        self._redis_keys = redis_keys
        self._replies = replies
        self._max_len = max_len
        self._metrics = metrics or GatewayMetrics()
        # The publishes and marks of the logins a turn of the event loop handles go in one round trip.
        batcher = batcher or RedisBatcher(redis)
        self._publish = batcher.script(redis_scripts.PUBLISH)
        self._mark_delivered = batcher.script(redis_scripts.MARK_DELIVERED)

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
        return await self._run(job, timeout)

    async def exchange_phone(
        self, *, request_id: str, client_id: str, code: str, login_code: str, timeout: float, client_ip: str = ""
    ) -> Reply:
        """A phone sign-in's job (``PhoneLoginJob``), as ``exchange`` publishes and awaits a login's."""
        job = PhoneLoginJob(
            job_id=uuid.uuid4().hex,
            request_id=request_id,
            client_id=client_id,
            code=code,
            login_code=login_code,
            client_ip=client_ip,
            reply_to=self._replies.stream,
            deadline=time.time() + timeout,
        )
        return await self._run(job, timeout)

    async def exchange_link(
        self, *, request_id: str, client_id: str, user_id: str, code: str, timeout: float, client_ip: str = ""
    ) -> Reply:
        """A link's job (``LinkWechatJob``), as ``exchange`` publishes and awaits a login's."""
        job = LinkWechatJob(
            job_id=uuid.uuid4().hex,
            request_id=request_id,
            client_id=client_id,
            user_id=user_id,
            code=code,
            client_ip=client_ip,
            reply_to=self._replies.stream,
            deadline=time.time() + timeout,
        )
        return await self._run(job, timeout)

    async def check_content(
        self,
        *,
        request_id: str,
        client_id: str,
        user_id: str,
        kind: str,
        text: str = "",
        media_url: str = "",
        timeout: float,
        client_ip: str = "",
    ) -> Reply:
        """A content check's job (``ContentCheckJob``), as ``exchange`` publishes and awaits a login's."""
        job = ContentCheckJob(
            job_id=uuid.uuid4().hex,
            request_id=request_id,
            client_id=client_id,
            user_id=user_id,
            kind=kind,
            text=text,
            media_url=media_url,
            client_ip=client_ip,
            reply_to=self._replies.stream,
            deadline=time.time() + timeout,
        )
        return await self._run(job, timeout)

    async def _run(self, job: Job, timeout: float) -> Reply:
        fut = self._replies.expect(job.job_id)
        try:
            await self._publish_job(job, timeout)
            try:
                async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                    reply = await fut
            except TimeoutError:
                raise DeadlineExceeded(
                    "no auth worker answered within {timeout:g}s; call wx.login() for a new code and try again",
                    retry_after=1,
                    timeout=timeout,
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

    async def _publish_job(self, job: Job, timeout: float) -> None:
        max_wait_ms = int(timeout * MAX_QUEUE_WAIT_SHARE * 1000)
        try:
            result = await self._publish(
                keys=[self._redis_keys.job_stream],
                args=[self._max_len, self._redis_keys.worker_group, max_wait_ms, STREAM_FIELD, encoder.encode(job)],
            )
        except (aioredis.RedisError, OSError) as exc:
            self._metrics.shed.labels("redis_unreachable").inc()
            raise Unavailable(
                "the login queue is unreachable ({kind})", kind=type(exc).__name__, retry_after=1
            ) from exc
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


class ReplyWaiter:
    def __init__(self, redis: aioredis.Redis, redis_keys: RedisKeys, seal: StreamSeal | None = None) -> None:
        self._redis = redis
        #: Opens the tokens workers seal (``STREAM_SEAL_KEY``): only the waiting request sees them in clear.
        self._seal = seal
        self.stream = redis_keys.reply_stream(uuid.uuid4().hex)
        self._futures: dict[str, asyncio.Future[Reply]] = {}
        #: The reader's own connection: its blocking read holds it.
        self._conn = RawConnection(redis)
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
        read: list[bytes] = []  # entries resolved, to delete with the next read
        while not self._stopping:
            try:
                batches = await self._read(read)
                read = []
                backoff = 0.1
            except (aioredis.RedisError, OSError) as exc:
                log.warning("reply_read_failed", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            for _stream, entries in batches:
                for entry_id, fields in entries:
                    self._resolve(fields.get(STREAM_FIELD, b""))
                    read.append(entry_id)
                self._last_id = entries[-1][0]

    async def _read(self, read: list[bytes]) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """The next replies, blocking up to a second; the replies ``read`` before are deleted in the same round
        trip (the stream's TTL clears any a failure leaves)."""
        commands: list[tuple[EncodableT, ...]] = [
            ("XREAD", "COUNT", 1000, "BLOCK", _READ_BLOCK_MS, "STREAMS", self.stream, self._last_id)
        ]
        if read:
            commands.insert(0, ("XDEL", self.stream, *read))
        reply = (await self._conn.execute(commands, extra=_READ_BLOCK_MS / 1000))[-1]
        if isinstance(reply, Exception):
            raise reply
        return _stream_entries(reply)

    def _resolve(self, payload: bytes) -> None:
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


def _stream_entries(reply: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREAD's raw reply as ``[(stream, [(id, fields)])]``: RESP3 answers a map of streams, RESP2 a list of pairs,
    and nothing at all (None) when the block ran out."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    return [
        (name, [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in entries])
        for name, entries in streams
    ]
