"""The auth worker: a consumer in the ``auth-workers`` group of the code-exchange stream. It reads jobs, takes over
those of dead workers, runs each (``auth_worker/login.py``), writes its reply for the gateway and acknowledges it.

Lifecycle as in arq: ``run()`` (sync, always closes), ``async_run(burst=...)`` for tests, ``close()``. On SIGTERM
it stops reading, lets in-flight jobs finish for ``shutdown_grace`` seconds, then cancels the rest; their
messages stay pending in the group for another worker to claim.

Crash recovery: while a worker holds a job it touches the job's pending entry (XCLAIM to itself) three times per
``claim_idle``; an entry left untouched that long belongs to a dead or stuck worker, and the next worker to look
takes it over (XAUTOCLAIM). A job whose deadline has passed is acknowledged and dropped with a log line.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import time
from typing import Any, cast

import aiohttp
import msgspec
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from auth_worker.access_token import AccessTokens
from auth_worker.breaker import CircuitBreaker
from auth_worker.content_safety import ContentChecks, ContentSafetyClient
from auth_worker.exchange import JobEntry
from auth_worker.login import Answer, JobHandler
from auth_worker.metrics import WorkerMetrics
from auth_worker.phone import PhoneClient
from auth_worker.status import start_status_server
from auth_worker.wechat import WechatClient
from shared.audit import AuditPublisher
from shared.config import WorkerConfig
from shared.guard import log_id
from shared.messages import (
    STREAM_FIELD,
    ContentChecked,
    Job,
    LoginFailed,
    LoginSucceeded,
    LoginSucceededSealed,
    WechatLinked,
    job_decoder,
)
from shared.ratelimit import Limit, RateLimiter, limiter_hash_key
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys
from shared.runtime import SHUTDOWN_SLACK, arm_shutdown_watchdog, new_event_loop
from shared.streamseal import stream_seal
from shared.user_store_client import UserStoreClient

log = structlog.get_logger()

_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_HEARTBEAT_EVERY = 5.0
#: The longest a stream read blocks waiting for new jobs.
_READ_BLOCK_MAX_S = 1.0


class Worker:
    def __init__(self, config: WorkerConfig, *, redis: aioredis.Redis | None = None) -> None:
        self.config = config
        self.name = config.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.redis_keys = RedisKeys(config.key_prefix)
        self.metrics = WorkerMetrics()
        self._redis = redis
        self._owns_redis = redis is None
        self._session: aiohttp.ClientSession | None = None
        self._handler: JobHandler | None = None
        self._audit: AuditPublisher | None = None
        self._status: web.AppRunner | None = None
        self._tasks: dict[asyncio.Task[None], bytes] = {}
        self._slots = asyncio.Semaphore(config.worker_concurrency)
        self._stopping = asyncio.Event()
        self._claim_idle_ms = int(config.claim_idle * 1000)
        #: monotonic times of the consumer loop's last turn and last successful read, for /healthz and /readyz.
        self.last_turn = time.monotonic()
        self.last_read = 0.0
        self.jobs_done = 0

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "the worker is not started"
        return self._redis

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; always closes its connections."""
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_with_watchdog, loop)
        started = time.monotonic()
        try:
            loop.run_until_complete(self.async_run())
        finally:
            loop.run_until_complete(self.close())
            loop.close()
            faulthandler.cancel_dump_traceback_later()
        log.info("worker_stopped", jobs_done=self.jobs_done, uptime_s=round(time.monotonic() - started, 1))
        return 0

    def _stop_with_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """``stop()``, and should the shutdown still run long after its grace period, a log line naming every
        unfinished task and where it waits, then exit 1: a stuck stop must explain itself, not hang a rollout."""
        if not self._stopping.is_set():
            arm_shutdown_watchdog(loop, "auth-worker", self.config.shutdown_grace + SHUTDOWN_SLACK)
        self.stop()

    def stop(self) -> None:
        """Stop taking jobs; ``async_run`` returns once in-flight jobs finish (or the grace period ends)."""
        if not self._stopping.is_set():
            log.info("worker_stopping", in_flight=len(self._tasks))
        self._stopping.set()

    async def async_run(self, *, burst: bool = False) -> None:
        """Consume jobs until stopped; with ``burst`` return as soon as the stream has nothing for us."""
        await self._start()
        housekeeping = asyncio.create_task(self._housekeeping())
        log.info("worker_started", worker=self.name, stream=self.redis_keys.job_stream, burst=burst)
        try:
            await self._consume_until_stopped(burst)
            await self._drain()
        finally:
            housekeeping.cancel()
            try:
                await housekeeping
            except asyncio.CancelledError:
                pass

    async def _consume_until_stopped(self, burst: bool) -> None:
        """The consumer loop, cut short if a stop finds it stuck in a Redis call (an unanswering server holds a call
        for its socket timeouts): entries read but not yet started stay pending, and another worker claims them."""
        consume = asyncio.create_task(self._consume(burst))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({consume, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not consume.done():
                # A turn of the loop takes at most one blocking read when Redis answers.
                await asyncio.wait({consume}, timeout=_READ_BLOCK_MAX_S + 1)
        finally:
            stopping.cancel()
            if not consume.done():
                log.warning("worker_read_cut_short")
                consume.cancel()
            try:
                await consume
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not consume.cancelled() or (current is not None and current.cancelling()):
                    raise  # async_run itself was cancelled

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._status is not None:
            await self._status.cleanup()
            self._status = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._audit is not None:
            await self._audit.close()  # before the Redis client it writes through
            self._audit = None
        if self._redis is not None:
            try:
                # Best effort, and short: the key expires by itself.
                await asyncio.wait_for(self._redis.delete(self.redis_keys.worker_heartbeat(self.name)), 2)
            except (aioredis.RedisError, OSError, TimeoutError):
                pass
            if self._owns_redis:
                await self._redis.aclose()
                self._redis = None

    async def _start(self) -> None:
        cfg = self.config
        if self._redis is None:
            # One quick reconnect for a connection that went stale; longer outages are retried by our own loops.
            self._redis = aioredis.Redis.from_url(
                cfg.redis_url,
                **cfg.redis_options(),
                socket_timeout=10,
                socket_connect_timeout=2,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 1),
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        user_store = UserStoreClient(self._session, cfg.user_store_url, cfg.internal_token)
        wechat = WechatClient(
            self._session,
            cfg.wechat_api_base,
            timeout=cfg.wechat_timeout,
            max_attempts=cfg.wechat_max_attempts,
            breaker=CircuitBreaker(cfg.wechat_breaker_failures, cfg.wechat_breaker_reset),
            metrics=self.metrics,
        )
        per_user = Limit("wechat_user", cfg.rate_limit_per_wechat_user, 60)
        if self._audit is None:
            self._audit = AuditPublisher(self.redis, self.redis_keys)
        # One batcher: the Redis steps of every job in flight, whatever the step, share round trips.
        batcher = RedisBatcher(self.redis)
        limiter = RateLimiter(
            self.redis,
            self.redis_keys,
            limiter_hash_key(cfg.stream_seal_key, cfg.internal_token),
            audit=self._audit,
            on_limited=lambda name: self.metrics.rate_limited.labels(name).inc(),
            batcher=batcher,
        )
        seal = stream_seal(self.config.stream_seal_key)
        #: The cluster's one access token per AppID, shared through Redis with every other worker.
        self.access_tokens = AccessTokens(
            self.redis,
            self.redis_keys,
            self._session,
            cfg.wechat_api_base,
            batcher=batcher,
            seal=seal,
            metrics=self.metrics,
            timeout=cfg.wechat_timeout,
        )
        phone = PhoneClient(self._session, cfg.wechat_api_base, self.access_tokens, timeout=cfg.wechat_timeout)
        self._handler = JobHandler(
            self.redis,
            self.redis_keys,
            user_store,
            wechat,
            seal,
            limiter=limiter,
            per_wechat_user=per_user,
            batcher=batcher,
            phone=phone,
            content=ContentChecks(
                ContentSafetyClient(self._session, cfg.wechat_api_base, self.access_tokens, timeout=cfg.wechat_timeout),
                user_store,
            ),
        )
        if cfg.worker_http_port and self._status is None:
            self._status = await start_status_server(self, cfg.worker_http_host, cfg.worker_http_port)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                self.redis_keys.job_stream, self.redis_keys.worker_group, id="0", mkstream=True
            )
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume(self, burst: bool) -> None:
        backoff = 0.1
        group_ready = False
        next_reclaim = 0.0
        while not self._stopping.is_set():
            self.last_turn = time.monotonic()
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                await self._slots.acquire()
                self._slots.release()
                if self._stopping.is_set():
                    break  # stopped while every slot was busy: start no Redis call now
                reclaimed = 0
                if time.monotonic() >= next_reclaim:
                    reclaimed = await self._reclaim()
                    next_reclaim = time.monotonic() + self.config.claim_idle / 2
                if self._free_slots() <= 0:
                    continue
                response = await self.redis.xreadgroup(
                    self.redis_keys.worker_group,
                    self.name,
                    {self.redis_keys.job_stream: ">"},
                    count=min(self._free_slots(), 100),
                    block=50 if burst else min(int(_READ_BLOCK_MAX_S * 1000), self._claim_idle_ms // 2),
                )
                self.last_read = time.monotonic()
                backoff = 0.1
            except (aioredis.RedisError, OSError) as exc:
                log.warning("stream_read_failed", error=str(exc), retry_in=backoff)
                group_ready = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            entries = cast(list[tuple[bytes, _Entries]], response)[0][1] if response else []
            for msg_id, fields in entries:
                await self._spawn(msg_id, fields, reclaimed=False)
            if burst and not entries and not reclaimed and not self._tasks:
                return

    async def _reclaim(self) -> int:
        """Take over jobs whose worker stopped touching them; returns how many."""
        taken = 0
        cursor: bytes | str = "0-0"
        for _ in range(10):
            free = self._free_slots()
            if free <= 0:
                break
            response = await self.redis.xautoclaim(
                self.redis_keys.job_stream,
                self.redis_keys.worker_group,
                self.name,
                min_idle_time=self._claim_idle_ms,
                start_id=cursor,
                count=free,
            )
            cursor = response[0]
            held = set(self._tasks.values())
            for msg_id, fields in response[1]:
                # Redis < 7 leaves a hole for an entry deleted while pending; we never delete before acking.
                if msg_id is None or not fields or msg_id in held:
                    continue
                taken += 1
                self.metrics.reclaimed.inc()
                await self._spawn(msg_id, fields, reclaimed=True)
            if cursor in (b"0-0", "0-0"):
                break
        return taken

    async def _spawn(self, msg_id: bytes, fields: dict[bytes, bytes], *, reclaimed: bool) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._process(msg_id, fields, reclaimed))
        self._tasks[task] = msg_id
        self.metrics.in_flight.set(len(self._tasks))
        task.add_done_callback(self._task_done)

    def _free_slots(self) -> int:
        return self.config.worker_concurrency - len(self._tasks)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self.metrics.in_flight.set(len(self._tasks))
        self._slots.release()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace)
        if pending:
            log.warning("worker_abandoned_jobs", count=len(pending))

    async def _process(self, msg_id: bytes, fields: dict[bytes, bytes], reclaimed: bool) -> None:
        assert self._handler is not None
        start = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(msg_id=msg_id.decode(), worker=self.name, reclaimed=reclaimed)
        try:
            job = job_decoder.decode(fields.get(STREAM_FIELD, b""))
        except msgspec.DecodeError as exc:
            self._record_outcome("undecodable", start, error=str(exc))
            await self._ack(msg_id)
            return
        structlog.contextvars.bind_contextvars(
            request_id=job.request_id, job_id=job.job_id, client_id=log_id(job.client_id)
        )
        if time.time() > job.deadline:
            self._expired(job, start)
            await self._ack(msg_id)
            return
        try:
            answer = await self._handler.handle(job, msg_id.decode())
        except Exception:
            log.exception("job_crashed")
            error = LoginFailed(
                job_id=job.job_id, status=500, error="server_error", error_description="internal error in the worker"
            )
            answer = Answer(error, "none")
        if answer.reply is None:
            self.metrics.exchanges.labels(answer.path).inc()
            self._expired(job, start, exchange=answer.path)
            await self._ack(msg_id)
            return
        replied = await self._reply(job, msg_id, answer)
        if replied is None:
            # Left pending: another worker drops it once its deadline has passed.
            self.metrics.exchanges.labels(answer.path).inc()
            self._record_outcome("undelivered", start, exchange=answer.path)
            return
        self.jobs_done += 1
        self.metrics.exchanges.labels(replied.path).inc()
        reply = replied.reply
        if isinstance(reply, LoginSucceeded | LoginSucceededSealed):
            self._record_outcome("token", start, exchange=replied.path)
        elif isinstance(reply, WechatLinked):
            self._record_outcome("linked", start, exchange=replied.path)
        elif isinstance(reply, ContentChecked):
            self._record_outcome("content_checked", start)
        elif reply is not None:
            self._record_outcome(
                reply.error,
                start,
                exchange=replied.path,
                status=reply.status,
                error_description=reply.error_description,
            )

    def _record_outcome(self, outcome: str, start: float, **fields: object) -> None:
        """The job's one canonical log line, and its metrics."""
        seconds = time.perf_counter() - start
        self.metrics.jobs.labels(outcome).inc()
        self.metrics.job_seconds.observe(seconds)
        emit = log.info if outcome in ("token", "linked", "content_checked", "invalid_grant") else log.warning
        emit("job", outcome=outcome, duration_ms=round(seconds * 1000, 2), **fields)

    def _expired(self, job: Job, start: float, **fields: object) -> None:
        late_by_ms = round((time.time() - job.deadline) * 1000)
        self._record_outcome("expired", start, dropped=True, late_by_ms=late_by_ms, **fields)

    async def _reply(self, job: Job, msg_id: bytes, answer: Answer) -> Answer | None:
        """Write the answer and acknowledge the job (``JobHandler.reply``), retrying until its deadline (Redis may be
        restarting); the answer as replied, or None when the deadline passed first."""
        assert self._handler is not None
        entry = JobEntry(job.reply_to, self.redis_keys.job_stream, self.redis_keys.worker_group, msg_id)
        backoff = 0.05
        while True:
            try:
                return await self._handler.reply(job, entry, answer)
            except (aioredis.RedisError, OSError) as exc:
                if time.time() + backoff > job.deadline:
                    structlog.contextvars.bind_contextvars(delivery_error=str(exc))
                    return None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def _ack(self, msg_id: bytes) -> None:
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xack(self.redis_keys.job_stream, self.redis_keys.worker_group, msg_id)
            pipe.xdel(self.redis_keys.job_stream, msg_id)
            await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            log.error("ack_failed", error=str(exc))

    async def _housekeeping(self) -> None:
        """Touch the jobs we hold so nobody reclaims them, and refresh the heartbeat key."""
        key = self.redis_keys.worker_heartbeat(self.name)
        next_heartbeat = 0.0
        while True:
            try:
                held: list[Any] = list(self._tasks.values())
                if held:
                    await self.redis.xclaim(
                        self.redis_keys.job_stream, self.redis_keys.worker_group, self.name, 0, held, justid=True
                    )
                if time.monotonic() >= next_heartbeat:
                    await self.redis.set(key, str(time.time()), ex=int(_HEARTBEAT_EVERY * 3))
                    next_heartbeat = time.monotonic() + _HEARTBEAT_EVERY
            except (aioredis.RedisError, OSError):
                pass  # the consumer loop reports Redis trouble
            await asyncio.sleep(self.config.claim_idle / 3)
