"""The auth worker: a consumer in the ``auth-workers`` group of the code-exchange stream.

Lifecycle as in arq: ``run()`` (sync, always closes), ``async_run(burst=...)`` for tests, ``close()``. On SIGTERM
it stops reading, lets in-flight jobs finish for ``shutdown_grace`` seconds, then cancels the rest; their
messages stay pending in the group for another worker to claim.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import cast

import aiohttp
import msgspec
import redis.asyncio as aioredis
import structlog

from auth_worker.jobs import JobHandler
from auth_worker.wechat import WechatClient
from shared.config import WorkerConfig
from shared.keys import Keys
from shared.messages import STREAM_FIELD, LoginSucceeded, encoder, job_decoder
from shared.runtime import new_event_loop
from shared.user_store_client import UserStoreClient

log = structlog.get_logger()

_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_HEARTBEAT_EVERY = 5.0
_REPLY_STREAM_MAX_LEN = 10_000
_REPLY_STREAM_TTL_MS = 10 * 60 * 1000


class Worker:
    def __init__(self, config: WorkerConfig, *, redis: aioredis.Redis | None = None) -> None:
        self.config = config
        self.name = config.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.keys = Keys(config.key_prefix)
        self._redis = redis
        self._owns_redis = redis is None
        self._session: aiohttp.ClientSession | None = None
        self._handler: JobHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.worker_concurrency)
        self._stopping = asyncio.Event()
        self.jobs_done = 0

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "the worker is not started"
        return self._redis

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; always closes its connections."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            loop.run_until_complete(self.async_run())
        finally:
            loop.run_until_complete(self.close())
            loop.close()
        return 0

    def stop(self) -> None:
        """Stop taking jobs; ``async_run`` returns once in-flight jobs finish (or the grace period ends)."""
        if not self._stopping.is_set():
            log.info("worker_stopping", in_flight=len(self._tasks))
        self._stopping.set()

    async def async_run(self, *, burst: bool = False) -> None:
        """Consume jobs until stopped; with ``burst`` return as soon as the stream has nothing for us."""
        await self._start()
        heartbeat = asyncio.create_task(self._heartbeat())
        log.info("worker_started", worker=self.name, stream=self.keys.job_stream, burst=burst)
        try:
            await self._consume(burst)
            await self._drain()
        finally:
            heartbeat.cancel()
            try:
                await heartbeat
            except asyncio.CancelledError:
                pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._redis is not None:
            try:
                await self._redis.delete(self.keys.worker_heartbeat(self.name))
            except (aioredis.RedisError, OSError):
                pass
            if self._owns_redis:
                await self._redis.aclose()
                self._redis = None

    async def _start(self) -> None:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.config.redis_url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=30
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        user_store = UserStoreClient(self._session, self.config.user_store_url, self.config.internal_token)
        wechat = WechatClient(
            self._session,
            self.config.wechat_api_base,
            timeout=self.config.wechat_timeout,
            max_attempts=self.config.wechat_max_attempts,
        )
        self._handler = JobHandler(user_store, wechat)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.job_stream, self.keys.worker_group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume(self, burst: bool) -> None:
        backoff = 0.1
        group_ready = False
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                await self._slots.acquire()
                self._slots.release()
                free = self._free_slots()
                response = await self.redis.xreadgroup(
                    self.keys.worker_group,
                    self.name,
                    {self.keys.job_stream: ">"},
                    count=min(free, 100),
                    block=50 if burst else 1000,
                )
                backoff = 0.1
            except (aioredis.RedisError, OSError) as exc:
                log.warning("stream_read_failed", error=str(exc), retry_in=backoff)
                group_ready = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            entries = cast(list[tuple[bytes, _Entries]], response)[0][1] if response else []
            for msg_id, fields in entries:
                await self._slots.acquire()
                task = asyncio.create_task(self._process(msg_id, fields))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            if burst and not entries and not self._tasks:
                return

    def _free_slots(self) -> int:
        return max(1, self.config.worker_concurrency - len(self._tasks))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace)
        if pending:
            log.warning("worker_abandoned_jobs", count=len(pending))

    async def _process(self, msg_id: bytes, fields: dict[bytes, bytes]) -> None:
        assert self._handler is not None
        start = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(msg_id=msg_id.decode(), worker=self.name)
        try:
            job = job_decoder.decode(fields.get(STREAM_FIELD, b""))
        except msgspec.DecodeError as exc:
            log.error("job_undecodable", error=str(exc))
            await self._ack(msg_id)
            return
        structlog.contextvars.bind_contextvars(request_id=job.request_id, job_id=job.job_id, client_id=job.client_id)
        if time.time() > job.deadline:
            log.warning("job_expired", late_by_ms=round((time.time() - job.deadline) * 1000))
            await self._ack(msg_id)
            return
        reply = await self._handler.handle(job)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(job.reply_to, {STREAM_FIELD: encoder.encode(reply)}, maxlen=_REPLY_STREAM_MAX_LEN, approximate=True)
        pipe.pexpire(job.reply_to, _REPLY_STREAM_TTL_MS)
        # Acknowledge only after the reply is written: the pipeline runs in order on one connection.
        pipe.xack(self.keys.job_stream, self.keys.worker_group, msg_id)
        pipe.xdel(self.keys.job_stream, msg_id)
        try:
            await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            log.error("reply_failed", error=str(exc))  # not acknowledged: the job stays pending for a retry
            return
        self.jobs_done += 1
        fields_out: dict[str, object] = {"outcome": "token"}
        if not isinstance(reply, LoginSucceeded):
            fields_out = {"outcome": reply.error, "status": reply.status, "error_description": reply.error_description}
        log.info("job", duration_ms=round((time.perf_counter() - start) * 1000, 2), **fields_out)

    async def _ack(self, msg_id: bytes) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(self.keys.job_stream, self.keys.worker_group, msg_id)
            pipe.xdel(self.keys.job_stream, msg_id)
            await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            log.error("ack_failed", error=str(exc))

    async def _heartbeat(self) -> None:
        key = self.keys.worker_heartbeat(self.name)
        while True:
            try:
                await self.redis.set(key, str(time.time()), ex=int(_HEARTBEAT_EVERY * 3))
            except (aioredis.RedisError, OSError):
                pass  # the consumer loop reports Redis trouble
            await asyncio.sleep(_HEARTBEAT_EVERY)
