"""The auth worker against real Redis, a real user store (PostgreSQL) and the WeChat sandbox, all in this process.

Jobs are published straight onto the stream, as the gateway does, and the worker runs in burst mode: it drains the
stream (new and reclaimable jobs) and returns. Crashes are reproduced by leaving a job pending for a consumer that
never acknowledges it, idle for longer than the claim timeout, with the exchange record in the state a dying worker
leaves behind. No test sleeps to order events: each waits for the state it needs (``eventually``) or an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import asyncpg
import jwt
import msgspec
import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from auth_worker.exchange import ExchangeRecords
from auth_worker.worker import Worker
from gateway.login_jobs import JobPublisher, ReplyWaiter
from services.ports import free_port
from services.wechat_sandbox.app import create_app as create_sandbox
from shared.config import MAX_LOGIN_TIMEOUT, SandboxConfig, Secret, UserStoreConfig, WorkerConfig
from shared.messages import (
    STREAM_FIELD,
    CodeExchangeJob,
    LoginFailed,
    LoginSucceeded,
    Reply,
    WechatSession,
    encoder,
    reply_decoder,
)
from shared.redis_keys import RedisKeys
from tests.oauth_helpers import eventually
from user_store import admin
from user_store.app import create_app as create_user_store

APPID = "wx-worker-tests"
SECRET = "worker-tests-secret"
TOKEN = Secret("t" * 32)


class Harness:
    """One application, one sandbox, one user store and a reply stream; helpers to publish jobs and read answers."""

    def __init__(self, redis: aioredis.Redis, prefix: str, http: aiohttp.ClientSession, config: WorkerConfig) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self.http = http
        self.config = config
        self.client_id = ""
        self.reply_stream = self.keys.reply_stream("tests")
        self.records = ExchangeRecords(redis)

    @property
    def sandbox(self) -> str:
        return self.config.wechat_api_base

    async def wx_login(self, openid: str = "") -> str:
        body = {"appid": APPID, **({"openid": openid} if openid else {})}
        async with self.http.post(f"{self.sandbox}/sandbox/login", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["code"])

    async def presented(self, code: str) -> int:
        async with self.http.get(f"{self.sandbox}/sandbox/codes/{code}") as resp:
            return int((await resp.json())["presented"])

    async def exchanged(self, code: str) -> bool:
        """Whether the sandbox has spent ``code`` (it does once a call with it succeeds, however slow)."""
        async with self.http.get(f"{self.sandbox}/sandbox/codes/{code}") as resp:
            return bool((await resp.json())["exchanged"])

    async def fault(self, **spec: Any) -> None:
        async with self.http.post(f"{self.sandbox}/sandbox/faults", json=spec) as resp:
            assert resp.status == 200, await resp.text()

    async def publish(self, code: str, *, job_id: str = "", seconds: float = 8.0) -> CodeExchangeJob:
        job = CodeExchangeJob(
            job_id=job_id or uuid.uuid4().hex,
            request_id=f"req-{uuid.uuid4().hex[:8]}",
            client_id=self.client_id,
            code=code,
            reply_to=self.reply_stream,
            deadline=time.time() + seconds,
        )
        await self.redis.xadd(self.keys.job_stream, {STREAM_FIELD: encoder.encode(job)})
        return job

    async def leave_pending(self, count: int = 1) -> None:
        """What a worker that died holding jobs a while ago leaves: entries read by a consumer that will never ack
        them, already idle far beyond ``claim_idle`` (XCLAIM's IDLE sets that age, so no test waits for it)."""
        await self.ensure_group()
        group, stream = self.keys.worker_group, self.keys.job_stream
        read = await self.redis.xreadgroup(group, "dead-worker", {stream: ">"}, count=count)
        ids: list[Any] = [msg_id for msg_id, _fields in cast(list[tuple[bytes, list[tuple[bytes, Any]]]], read)[0][1]]
        await self.redis.xclaim(stream, group, "dead-worker", 0, ids, idle=60_000, justid=True)

    async def wait_pending(self) -> None:
        """Until some worker has taken a job from the stream."""
        await self.ensure_group()

        async def taken() -> bool:
            return bool((await self.redis.xpending(self.keys.job_stream, self.keys.worker_group))["pending"])

        await eventually(taken, 5, "a worker taking the job", interval=0.01)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.job_stream, self.keys.worker_group, id="0", mkstream=True)
        except aioredis.ResponseError:
            pass

    async def run(self, **overrides: Any) -> Worker:
        """One worker in burst mode, returning once the stream holds nothing it can take."""
        worker = Worker(msgspec.structs.replace(self.config, **overrides), redis=self.redis)
        try:
            await asyncio.wait_for(worker.async_run(burst=True), 60)
        finally:
            await worker.close()
        return worker

    async def replies(self) -> dict[str, Reply]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.redis.xrange(self.reply_stream))
        decoded = (reply_decoder.decode(fields[STREAM_FIELD]) for _id, fields in entries)
        return {reply.job_id: reply for reply in decoded}

    async def reply(self, job: CodeExchangeJob) -> Reply:
        return (await self.replies())[job.job_id]

    def record_key(self, code: str) -> str:
        return self.keys.code_exchange(APPID, self.client_id, code)

    @contextlib.asynccontextmanager
    async def serving(self, **overrides: Any) -> AsyncIterator[JobPublisher]:
        """A worker running in the background, and the gateway's publisher to log in through it."""
        worker = Worker(msgspec.structs.replace(self.config, **overrides), redis=self.redis)
        run = asyncio.create_task(worker.async_run())
        waiter = ReplyWaiter(self.redis, self.keys)
        waiter.start()
        try:
            yield JobPublisher(self.redis, self.keys, waiter, 1000)
        finally:
            worker.stop()
            await asyncio.wait_for(run, 10)
            await worker.close()
            await waiter.stop()

    async def login(self, gateway: JobPublisher, code: str) -> Reply:
        """What the gateway does for one token request; returns the answer it would render."""
        return await gateway.exchange(
            request_id="req", client_id=self.client_id, code=code, username="", avatar="", timeout=5.0
        )


class _UncancelledServer(TestServer):
    """A test server whose handlers run to their end after the client hung up, as WeChat's do (and the sandbox
    process's: ``web.run_app`` does not cancel them); aiohttp's test server would cancel them."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, **{**kwargs, "handler_cancellation": False})


@pytest.fixture(name="harness")
async def _harness(redis_client: aioredis.Redis, key_prefix: str, pg_url: str) -> AsyncIterator[Harness]:
    sandbox = _UncancelledServer(create_sandbox(SandboxConfig(sandbox_apps=f"{APPID}:{SECRET}")))
    store = TestServer(create_user_store(UserStoreConfig(internal_token=TOKEN, database_url=Secret(pg_url))))
    async with sandbox, store, aiohttp.ClientSession() as http:
        config = WorkerConfig(
            internal_token=TOKEN,
            key_prefix=key_prefix,
            redis_url="redis://unused",
            user_store_url=str(store.make_url("")),
            wechat_api_base=str(sandbox.make_url("")).rstrip("/"),
            worker_name="worker-under-test",
            claim_idle=0.2,
            wechat_timeout=1.0,
        )
        harness = Harness(redis_client, key_prefix, http, config)
        conn = await asyncpg.connect(pg_url)
        try:
            await admin.create_organization(conn, "acme")
            app = await admin.create_application(conn, "acme", "shop")
            await admin.attach_miniprogram_provider(conn, "shop", APPID, SECRET)
        finally:
            await conn.close()
        harness.client_id = app.client_id
        yield harness


def _gone(redis: aioredis.Redis, key: str):
    async def check() -> bool:
        return not await redis.exists(key)

    return check


def _has_reply(harness: Harness, job: CodeExchangeJob):
    async def check() -> bool:
        return job.job_id in await harness.replies()

    return check


def sample(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def token_of(reply: Reply) -> str:
    assert isinstance(reply, LoginSucceeded), reply
    return reply.token.access_token


def error_of(reply: Reply) -> tuple[int, str]:
    assert isinstance(reply, LoginFailed), reply
    return reply.status, reply.error


class TestExactlyOnce:
    async def test_double_tap_shares_one_exchange(self, harness):
        """Two in-flight jobs with one code: WeChat sees the code once and both clients get the same token."""
        code = await harness.wx_login("o-double-tap")
        first = await harness.publish(code)
        second = await harness.publish(code)
        worker = await harness.run()
        replies = await harness.replies()
        assert token_of(replies[first.job_id]) == token_of(replies[second.job_id])
        assert await harness.presented(code) == 1
        assert sample(worker, "minidoor_worker_code_exchanges_total", path="shared") == 1

    async def test_answer_never_reaches_another_application(self, harness, pg_url):
        """Two applications sharing one WeChat appid: a code sent with both never gives one the other's token;
        WeChat's single use decides which wins (the worker runs both jobs at once), the loser gets invalid_grant."""
        conn = await asyncpg.connect(pg_url)
        try:
            other = await admin.create_application(conn, "acme", "other-shop")
            await admin.attach_miniprogram_provider(conn, "other-shop", APPID, SECRET)
        finally:
            await conn.close()
        code = await harness.wx_login("o-two-apps")
        first = await harness.publish(code)
        harness.client_id, mine = other.client_id, harness.client_id
        try:
            second = await harness.publish(code)
        finally:
            harness.client_id = mine
        await harness.run()
        replies = await harness.replies()
        jobs = {first.job_id: first, second.job_id: second}
        won = [job_id for job_id, reply in replies.items() if isinstance(reply, LoginSucceeded)]
        assert len(won) == 1, replies
        (lost,) = set(jobs) - set(won)
        assert error_of(replies[lost]) == (400, "invalid_grant")
        claims = jwt.decode(token_of(replies[won[0]]), options={"verify_signature": False})
        assert claims["aud"] == [jobs[won[0]].client_id]

    async def test_replay_after_delivery_is_invalid_grant(self, harness):
        """A code sent again after its answer reached the client is 400 invalid_grant, and never reaches WeChat."""
        code = await harness.wx_login("o-replay")
        async with harness.serving() as gateway:
            token_of(await harness.login(gateway, code))
            reply = await harness.login(gateway, code)
        assert error_of(reply) == (400, "invalid_grant")
        assert isinstance(reply, LoginFailed) and "40163" in reply.error_description
        assert await harness.presented(code) == 1

    async def test_record_after_a_login(self, harness):
        """Once delivered, the code's record holds when, no session_key and no token, and expires; the answer is
        kept aside only for the longest login timeout plus a margin."""
        code = await harness.wx_login("o-record")
        async with harness.serving() as gateway:
            token = token_of(await harness.login(gateway, code))
        key = harness.record_key(code)
        record = await harness.redis.hgetall(key)
        assert b"delivered" in record and b"calling" in record
        assert b"session" not in record and b"reply" not in record
        assert token.encode() not in b"".join(record.values())
        assert 0 < await harness.redis.pttl(key) <= 10 * 60 * 1000
        assert token.encode() in await harness.redis.get(RedisKeys.delivered_answer(key))
        assert 0 < await harness.redis.pttl(RedisKeys.delivered_answer(key)) <= (MAX_LOGIN_TIMEOUT + 5) * 1000

    async def test_delivered_answer_serves_jobs_published_before_delivery(self, harness):
        """A double tap whose job is taken only after the first tap's answer was delivered still gets that token
        while the kept answer lives; once it has expired (no such job can still wait), it gets invalid_grant."""
        for keep, expected in ((5.0, "token"), (0.1, "invalid_grant")):
            code = await harness.wx_login(f"o-kept-{keep}")
            first = await harness.publish(code)
            await harness.run()
            late = await harness.publish(code)  # published before the delivery below
            reply = await harness.reply(first)
            # What the first tap's gateway does as it hands the answer over; no worker runs meanwhile.
            gateway = JobPublisher(harness.redis, harness.keys, ReplyWaiter(harness.redis, harness.keys), 1000)
            await gateway._delivered(harness.record_key(code), keep=keep)
            kept = RedisKeys.delivered_answer(harness.record_key(code))
            if expected == "token":
                assert await harness.redis.exists(kept)
            else:
                await eventually(_gone(harness.redis, kept), 5, "the kept answer expiring")
            await harness.run()
            answer = await harness.reply(late)
            if expected == "token":
                assert token_of(answer) == token_of(reply)
            else:
                assert error_of(answer) == (400, "invalid_grant")
            assert await harness.presented(code) == 1

    async def test_delivery_marked_by_an_older_gateway(self, harness):
        """A record an older gateway marked (``delivered`` in milliseconds, the answer left in place) still decides:
        a job published before that millisecond gets the answer, one published in it or later is a replay."""
        records, key = harness.records, harness.record_key("old-gateway-code")
        answer = LoginFailed(job_id="first", status=400, error="invalid_grant", error_description="the answer")
        await harness.redis.hset(key, mapping={"reply": encoder.encode(answer), "delivered": "1795806519374"})
        now = time.time()
        before = await records.claim(key, job_id="a", stream_id="1795806519373-7", now=now, deadline=now + 5)
        assert before.reply is not None and before.reply.error_description == "the answer"
        for stream_id in ("1795806519374-0", "1795806519375-0"):
            late = await records.claim(key, job_id="b", stream_id=stream_id, now=now, deadline=now + 5)
            assert late.state.value == "replayed"

    async def test_stale_owner_after_delivery_changes_nothing(self, harness):
        """A job that owned the code, was taken over, and finishes after the answer was delivered: it gets the
        delivered answer (then, once that is no longer kept, a replay), stores no session_key, and cannot give
        the code back, so replays stay refused."""
        records, key = harness.records, harness.record_key("stale-owner-code")
        now = time.time()
        claim = await records.claim(key, job_id="stale", stream_id="1-0", now=now, deadline=now + 5)
        assert claim.state.value == "owner"
        first = LoginFailed(job_id="winner", status=400, error="invalid_grant", error_description="the first answer")
        assert await records.finish(key, first) == first
        gateway = JobPublisher(harness.redis, harness.keys, ReplyWaiter(harness.redis, harness.keys), 1000)
        await gateway._delivered(key, keep=5)

        late = msgspec.structs.replace(first, job_id="stale", error_description="a later answer")
        await records.store_session(key, WechatSession(openid="o", session_key="SECRET-SESSION-KEY"))
        assert await records.finish(key, late) == first
        await harness.redis.delete(RedisKeys.delivered_answer(key))  # as when it expires
        assert await records.finish(key, late) is None
        await records.release(key, "stale")
        record = await harness.redis.hgetall(key)
        assert b"delivered" in record and b"session" not in record and b"reply" not in record

    async def test_answer_nobody_received_goes_to_the_retry(self, harness):
        """A token minted after its client gave up is handed to that client's retry with the same code."""
        code = await harness.wx_login("o-gave-up")
        abandoned = await harness.publish(code)  # its gateway stopped waiting: nobody hands the answer over
        await harness.run()
        async with harness.serving() as gateway:
            retry = await harness.login(gateway, code)
            assert token_of(retry) == token_of(await harness.reply(abandoned))
            assert error_of(await harness.login(gateway, code)) == (400, "invalid_grant")
        assert await harness.presented(code) == 1


class TestCrashRecovery:
    async def test_job_of_a_dead_worker_is_reclaimed(self, harness):
        """A job left pending by a worker that died is taken over once idle, and its client gets a token."""
        code = await harness.wx_login("o-orphan")
        job = await harness.publish(code)
        await harness.leave_pending()
        worker = await harness.run()
        token_of(await harness.reply(job))
        assert sample(worker, "minidoor_worker_reclaimed_jobs_total") == 1
        assert await harness.redis.xlen(harness.keys.job_stream) == 0
        assert (await harness.redis.xpending(harness.keys.job_stream, harness.keys.worker_group))["pending"] == 0

    async def test_retry_after_crash_reuses_the_stored_session(self, harness):
        """Crash after the exchange: the retried job logs in with the stored session, without calling WeChat."""
        code = await harness.wx_login("o-crash-after-exchange")
        job = await harness.publish(code)
        await harness.leave_pending()
        # The dead worker had claimed the code, presented it and stored WeChat's answer.
        key = harness.record_key(code)
        await harness.records.claim(key, job_id=job.job_id, stream_id="0-0", now=time.time(), deadline=job.deadline)
        assert await harness.records.mark_calling(key, job.job_id)
        params = {"appid": APPID, "secret": SECRET, "js_code": code, "grant_type": "authorization_code"}
        async with harness.http.get(f"{harness.sandbox}/sns/jscode2session", params=params) as resp:
            answer = await resp.json()
        await harness.records.store_session(key, WechatSession(openid=answer["openid"], session_key="sk"))
        worker = await harness.run()
        token_of(await harness.reply(job))
        assert await harness.presented(code) == 1
        assert sample(worker, "minidoor_worker_code_exchanges_total", path="session_reused") == 1

    async def test_interrupted_exchange_is_never_presented_again(self, harness):
        """Crash while WeChat was being asked: the code is not sent twice; the client is told to log in again."""
        code = await harness.wx_login("o-crash-during-exchange")
        job = await harness.publish(code)
        await harness.leave_pending()
        key = harness.record_key(code)
        await harness.records.claim(key, job_id=job.job_id, stream_id="0-0", now=time.time(), deadline=job.deadline)
        assert await harness.records.mark_calling(key, job.job_id)
        await harness.run()
        reply = await harness.reply(job)
        assert error_of(reply) == (503, "temporarily_unavailable")
        assert isinstance(reply, LoginFailed) and "wx.login()" in reply.error_description
        assert await harness.presented(code) == 0

    async def test_stored_answer_is_delivered_again(self, harness):
        """Crash after the answer was stored but before it was sent: the retry sends that same answer."""
        code = await harness.wx_login("o-crash-before-delivery")
        job = await harness.publish(code)
        await harness.leave_pending()
        key = harness.record_key(code)
        await harness.records.claim(key, job_id=job.job_id, stream_id="0-0", now=time.time(), deadline=job.deadline)
        stored = LoginFailed(job_id=job.job_id, status=403, error="access_denied", error_description="stored")
        await harness.records.finish(key, stored)
        await harness.run()
        assert await harness.reply(job) == msgspec.structs.replace(stored, record=key)
        assert await harness.presented(code) == 0

    async def test_expired_job_is_dropped_with_a_log_line(self, harness):
        """A job whose deadline has passed is acknowledged and logged, not processed."""
        code = await harness.wx_login("o-late")
        job = await harness.publish(code, seconds=-1)
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await harness.run()
        assert await harness.replies() == {}
        assert await harness.presented(code) == 0
        assert await harness.redis.xlen(harness.keys.job_stream) == 0
        [line] = [entry for entry in logs if entry["event"] == "job"]
        assert line["outcome"] == "expired"
        assert line["request_id"] == job.request_id

    async def test_live_worker_keeps_a_slow_job(self, harness):
        """A job slower than the claim timeout is not taken from the live worker that holds it."""
        code = await harness.wx_login("o-slow")
        await harness.fault(latency_ms=1500)
        job = await harness.publish(code)
        # One slot: while busy the holder makes no reclaim passes of its own, so only its keep-alive protects the job.
        holder_config = {"worker_name": "holder", "claim_idle": 0.5, "wechat_timeout": 3.0, "worker_concurrency": 1}
        holder = asyncio.create_task(harness.run(**holder_config))
        await harness.wait_pending()
        watcher_config = msgspec.structs.replace(harness.config, worker_name="watcher", claim_idle=0.5)
        watcher = Worker(watcher_config, redis=harness.redis)
        watching = asyncio.create_task(watcher.async_run())
        watched_from = time.monotonic()
        await holder
        # The watcher looked while the job was older than the claim timeout: its reclaim passes (every
        # claim_idle / 2) would have taken the job, had the holder's keep-alive not kept it.
        assert watcher.last_turn - watched_from > 2 * watcher_config.claim_idle
        watcher.stop()
        await watching
        await watcher.close()
        assert list(await harness.replies()) == [job.job_id]
        token_of(await harness.reply(job))
        assert sample(watcher, "minidoor_worker_reclaimed_jobs_total") == 0
        assert await harness.presented(code) == 1


class TestWechatFailures:
    async def test_timeout_is_not_retried(self, harness):
        """WeChat too slow: one presentation only; 503 asking for a new code; the same code later is refused."""
        code = await harness.wx_login("o-timeout")
        await harness.fault(latency_ms=1500)
        async with harness.serving(wechat_timeout=0.3) as gateway:
            reply = await harness.login(gateway, code)
            assert error_of(reply) == (503, "temporarily_unavailable")
            assert isinstance(reply, LoginFailed) and "wx.login()" in reply.error_description
            await eventually(lambda: harness.exchanged(code), 5, "the sandbox finishing the slow call")
            assert error_of(await harness.login(gateway, code)) == (400, "invalid_grant")
        assert await harness.presented(code) == 1

    async def test_circuit_breaker_fails_fast_and_frees_the_code(self, harness):
        """WeChat down: after two failures calls stop reaching it; the unspent code works once WeChat is back."""
        await harness.fault(errcode=-1, count=1000)
        first = await harness.publish(await harness.wx_login("o-breaker-1"))
        code = await harness.wx_login("o-breaker-2")
        second = await harness.publish(code)
        overrides = {"wechat_breaker_failures": 2, "wechat_breaker_reset": 0.5, "worker_concurrency": 1}
        worker = await harness.run(**overrides)
        assert error_of(await harness.reply(first)) == (503, "temporarily_unavailable")
        assert error_of(await harness.reply(second)) == (503, "temporarily_unavailable")
        assert await harness.presented(code) == 0
        assert sample(worker, "minidoor_wechat_calls_total", outcome="circuit_open") >= 1
        async with harness.http.delete(f"{harness.sandbox}/sandbox/faults"):
            pass
        retry = await harness.publish(code)
        await harness.run(**overrides)
        token_of(await harness.reply(retry))


class TestUserStoreDown:
    async def test_retry_with_the_same_code_reuses_the_session(self, harness, pg_url):
        """The user store fails after the exchange: 503; the same code then logs in without a second exchange."""
        stub = web.Application()

        async def provider(request: web.Request) -> web.Response:
            body = {"client_id": harness.client_id, "provider": "p", "appid": APPID, "secret": SECRET}
            return web.json_response(body)

        async def unavailable(request: web.Request) -> web.Response:
            body = {"error": "temporarily_unavailable", "error_description": "database down"}
            return web.json_response(body, status=503, headers={"Retry-After": "1"})

        stub.router.add_get("/internal/applications/{client_id}/wechat-miniprogram", provider)
        stub.router.add_post("/internal/logins/wechat-miniprogram", unavailable)
        code = await harness.wx_login("o-store-down")
        async with TestServer(stub) as down:
            job = await harness.publish(code, seconds=1.5)
            await harness.run(user_store_url=str(down.make_url("")))
        assert error_of(await harness.reply(job)) == (503, "temporarily_unavailable")
        retry = await harness.publish(code)
        await harness.run()
        token_of(await harness.reply(retry))
        assert await harness.presented(code) == 1
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM users") == 1
        finally:
            await conn.close()


class TestStatusPort:
    async def test_health_and_metrics(self, harness):
        """WORKER_HTTP_PORT serves /healthz, /readyz and Prometheus /metrics with the worker's counters."""
        port = free_port()
        worker = Worker(msgspec.structs.replace(harness.config, worker_http_port=port), redis=harness.redis)
        run = asyncio.create_task(worker.async_run())
        try:
            job = await harness.publish(await harness.wx_login("o-metrics"))
            await eventually(_has_reply(harness, job), 5, "the worker answering the job", interval=0.05)
            base = f"http://127.0.0.1:{port}"
            async with harness.http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["worker"] == "worker-under-test"
            async with harness.http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            metrics_auth = {"Authorization": f"Bearer {TOKEN}"}
            async with harness.http.get(f"{base}/metrics", headers=metrics_auth) as resp:
                text = await resp.text()
            assert 'minidoor_worker_jobs_total{outcome="token"} 1.0' in text
            assert 'minidoor_wechat_calls_total{outcome="ok"} 1.0' in text
            assert "minidoor_worker_reclaimed_jobs_total 0.0" in text
        finally:
            worker.stop()
            await asyncio.wait_for(run, 10)
            await worker.close()


class TestShutdown:
    async def test_stop_does_not_wait_on_an_unanswering_redis(self):
        """A Redis that accepts connections and never answers (a partition without resets) holds each call for its
        socket timeouts; ``stop()`` (what SIGTERM calls) still ends the worker within seconds, not after them."""
        held: list[asyncio.StreamWriter] = []
        asked = asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            if await reader.read(1):
                asked.set()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = WorkerConfig(
            internal_token=TOKEN,
            redis_url=f"redis://127.0.0.1:{port}/0",
            user_store_url="http://127.0.0.1:9",
            wechat_api_base="http://127.0.0.1:9",
            shutdown_grace=0.5,
        )
        worker = Worker(config)
        run = asyncio.create_task(worker.async_run())
        try:
            # Stopped while a call waits on Redis: the worker has sent a command nobody will answer.
            await asyncio.wait_for(asked.wait(), 5)
            assert held, "the worker never connected"
            started = time.monotonic()
            worker.stop()
            await asyncio.wait_for(run, 5)
            await asyncio.wait_for(worker.close(), 5)
            assert time.monotonic() - started < 6
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await asyncio.wait_for(worker.close(), 5)  # a no-op after a clean close
            for writer in held:
                writer.close()
            server.close()
