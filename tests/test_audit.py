"""The audit log: what a login, a refresh, a password change, a revocation, a logout and an admin command leave in
``audit_events`` (and what they never leave), the batching writer, the stream intake, the prune and ``make audit``."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from shared.audit import AuditPublisher
from shared.messages import STREAM_FIELD, AuditEvent, CodeExchangeJob, encoder, job_decoder
from shared.redis_keys import RedisKeys
from tests.account_helpers import api, update
from tests.oauth_helpers import claims_of, eventually, issued_session_key, revoke, stack_login
from tests.stack import ROOT
from user_store.audit import AuditStreamDrain, AuditWriter, insert_events
from user_store.metrics import UserStoreMetrics
from user_store.pruning import prune
from user_store.queries.audit import delete_events_before

REFRESH_PATH = "/api/login/oauth/refresh_token"


async def events(db: asyncpg.Connection, **where: str) -> list[dict[str, Any]]:
    """Audit rows whose columns equal ``where``, oldest first (``details`` decoded)."""
    clauses = " AND ".join(f"{column}::text = ${i}" for i, column in enumerate(where, 1)) or "true"
    rows = await db.fetch(f"SELECT * FROM audit_events WHERE {clauses} ORDER BY at, id", *where.values())
    return [{**row, "details": msgspec.json.decode(row["details"])} for row in rows]


async def wait_for_event(db: asyncpg.Connection, **where: str) -> list[dict[str, Any]]:
    """The writer flushes every 0.2 s: wait (bounded) until the event is committed."""
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        found[:] = await events(db, **where)
        return bool(found)

    await eventually(check, 10, f"audit event {where}")
    return found


class TestEventsOfAStack:
    async def test_each_event_is_recorded_and_no_secret_is(self, session, stack, db):
        """Logins (new, then returning), a refresh, a password change, a revocation, a logout and an admin command
        each leave their row with actor, target, organization, client, client IP and request id; no token,
        password, session key or client secret appears anywhere in the table."""
        openid = f"audit-{secrets.token_hex(6)}"
        codes: list[str] = []
        first = await stack_login(session, stack, openid, codes=codes)
        user_id = claims_of(first["access_token"])["sub"]
        second = await stack_login(session, stack, openid, codes=codes)
        async with session.post(
            stack.gateway + REFRESH_PATH,
            data={
                "grant_type": "refresh_token",
                "client_id": stack.demo["clientId"],
                "refresh_token": second["refresh_token"],
            },
        ) as resp:
            assert resp.status == 200, await resp.text()
            third = await resp.json()
        password = f"pw-{secrets.token_hex(8)}"
        await update(session, stack, {"password": password, "displayName": "Audited"}, token=third["access_token"])
        await revoke(session, stack, first["refresh_token"])
        await api(session, stack, "GET", "/api/logout", token=third["access_token"])
        org = f"audit-org-{secrets.token_hex(4)}"
        stack.admin("create-org", "--name", org)

        logins = await wait_for_event(db, action="login", target_user_id=user_id)
        assert len(logins) == 2
        assert [row["details"]["user"] for row in logins] == ["new", "returning"]
        for row in logins:
            assert row["actor_kind"] == "user" and row["actor_id"] == user_id
            assert row["organization"] == "demo" and row["client_id"] == stack.demo["clientId"]
            assert row["application"] and str(row["client_ip"]) == "127.0.0.1" and row["request_id"]
        (refreshed,) = await wait_for_event(db, action="token_refreshed", target_user_id=user_id)
        assert refreshed["client_id"] == stack.demo["clientId"] and str(refreshed["client_ip"]) == "127.0.0.1"
        (changed,) = await wait_for_event(db, action="password_changed", target_user_id=user_id)
        assert changed["actor_id"] == user_id and str(changed["client_ip"]) == "127.0.0.1" and changed["request_id"]
        (profile,) = await wait_for_event(db, action="user_updated", target_user_id=user_id)
        assert profile["details"] == {"fields": ["display_name"]}
        (revoked,) = await wait_for_event(db, action="token_revoked", actor_id=stack.demo["clientId"])
        assert revoked["details"]["kind"] == "refresh" and revoked["details"]["revoked"] >= 1
        assert revoked["target_user_id"] == uuid.UUID(user_id) and revoked["organization"] == "demo"
        (logout,) = await wait_for_event(db, action="logout", target_user_id=user_id)
        assert logout["organization"] == "demo" and logout["details"]["revoked"] >= 1
        (admin,) = await wait_for_event(db, action="admin.create_org", organization=org)
        assert admin["actor_kind"] == "admin" and admin["actor_id"]

        dump = "\n".join(row[0] for row in await db.fetch("SELECT audit_events::text FROM audit_events"))
        session_keys = [await issued_session_key(session, stack, code) for code in codes]
        secrets_seen = [
            *(t[k] for t in (first, second, third) for k in ("access_token", "refresh_token")),
            password,
            stack.demo["clientSecret"],
            *session_keys,
        ]
        assert session_keys and all(secret and secret not in dump for secret in secrets_seen)

    async def test_make_audit_prints_json_lines(self, session, stack):
        """``admin audit --org`` prints one JSON object per line, oldest first, of that organization only;
        ``--since`` in the future prints nothing."""
        org = f"audit-cli-{secrets.token_hex(4)}"
        stack.admin("create-org", "--name", org)
        stack.admin("create-app", "--org", org, "--name", f"{org}-app")
        out = _cli(stack, "audit", "--org", org)
        assert out.returncode == 0, out.stderr
        lines = [msgspec.json.decode(line) for line in out.stdout.splitlines()]
        assert [line["action"] for line in lines] == ["admin.create_org", "admin.create_app"]
        assert {line["organization"] for line in lines} == {org} and lines[0]["at"] <= lines[1]["at"]
        assert lines[0]["actor_kind"] == "admin" and lines[1]["client_id"]
        assert lines[1]["details"] == {"signing_alg": "RS256"}
        future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
        out = _cli(stack, "audit", "--org", org, "--since", future)
        assert out.returncode == 0 and out.stdout == b""

    def test_bad_since_is_one_error_line(self, stack):
        """A SINCE that is not a time: exit code 1 and one line on stderr naming it."""
        out = _cli(stack, "audit", "--since", "last tuesday")
        assert out.returncode == 1 and out.stdout == b""
        assert out.stderr.decode().splitlines() == [
            "error: SINCE 'last tuesday' is not an ISO 8601 time, e.g. 2026-12-01T00:00Z"
        ]


def _cli(stack: Any, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "services", "admin", *args], cwd=ROOT, env=stack.env, capture_output=True, timeout=60
    )


def _took_a_batch(writer: AuditWriter):
    async def check() -> bool:
        return bool(writer._batch)  # what run() took off the queue and has not written yet

    return check


class TestWriter:
    async def test_full_queue_drops_and_counts(self, pool):
        """Past the queue's size an event is dropped at once, counted and logged, never waited for."""
        metrics = UserStoreMetrics()
        writer = AuditWriter(pool, metrics, queue_size=2)
        with capture_logs() as logs:
            assert [writer.add(AuditEvent(action=f"a{i}")) for i in range(3)] == [True, True, False]
        assert metrics.audit_dropped.labels("queue_full")._value.get() == 1
        assert [log["event"] for log in logs] == ["audit_event_dropped"]
        await writer.flush()
        async with pool.acquire() as conn:
            assert [r["action"] for r in await conn.fetch("SELECT action FROM audit_events ORDER BY id")] == [
                "a0",
                "a1",
            ]

    async def test_flush_writes_what_is_queued(self, pool):
        """Events queued and not yet written (the interval not reached) are inserted by ``flush``, as at shutdown;
        text fields are bounded and a malformed IP or user id becomes NULL instead of failing the batch."""
        writer = AuditWriter(pool, UserStoreMetrics(), flush_interval=3600)
        user_id = str(uuid.uuid4())
        writer.add(AuditEvent(action="x" * 1000, client_ip="not-an-ip", target_user_id="nope"))
        writer.add(AuditEvent(action="ok", client_ip="::1", target_user_id=user_id, details={"n": 1}))
        await writer.flush()
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM audit_events ORDER BY id")
        assert len(rows[0]["action"]) == 256 and rows[0]["client_ip"] is None and rows[0]["target_user_id"] is None
        assert str(rows[1]["client_ip"]) == "::1" and str(rows[1]["target_user_id"]) == user_id

    async def test_cancel_as_an_event_arrives_stops_the_writer(self, pool):
        """A shutdown's cancel that lands in the same loop turn as a new event still ends ``run`` (a lost cancel
        hung the user store's shutdown under load), and ``flush`` then writes that event."""
        writer = AuditWriter(pool, UserStoreMetrics(), flush_interval=3600)
        task = asyncio.create_task(writer.run())
        writer.add(AuditEvent(action="first"))
        # The writer took "first" off the queue, so it now waits for more of the batch: the second event and the
        # cancel land in that wait, in one loop turn.
        await eventually(_took_a_batch(writer), 5, "the writer taking the first event", interval=0)
        writer.add(AuditEvent(action="second"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await writer.flush()
        async with pool.acquire() as conn:
            actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_events ORDER BY id")]
        assert actions == ["first", "second"]


class TestStreamIntake:
    async def test_published_event_is_written_then_acknowledged(self, pool, redis_client, key_prefix):
        """An ``AuditEvent`` published with ``AuditPublisher`` (as the rate limiter does) is drained into
        ``audit_events`` by the consumer group and XACKed after the insert; nothing stays pending."""
        keys = RedisKeys(key_prefix)
        publisher = AuditPublisher(redis_client, keys)
        event = AuditEvent(
            action="rate_limited",
            outcome="denied",
            client_id="app-1",
            client_ip="203.0.113.9",
            request_id="req-1",
            details={"limit": "login_per_ip", "window_s": 60},
        )
        assert publisher.publish(event)
        await publisher.close()
        assert publisher.dropped == 0
        writer = AuditWriter(pool, UserStoreMetrics())
        task = asyncio.create_task(writer.run())
        try:
            drain = AuditStreamDrain(redis_client, keys, writer, "test-consumer")
            assert await drain.drain_once(block_ms=100) == 1
        finally:
            task.cancel()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM audit_events")
        assert row["action"] == "rate_limited" and row["outcome"] == "denied" and row["client_id"] == "app-1"
        assert str(row["client_ip"]) == "203.0.113.9" and row["details"] == {"limit": "login_per_ip", "window_s": 60}
        pending = await redis_client.xpending(keys.audit_stream, keys.audit_group)
        assert pending["pending"] == 0

    async def test_undecodable_entry_is_acknowledged_and_skipped(self, pool, redis_client, key_prefix):
        """A stream entry that is not an ``AuditEvent`` is skipped with a warning and acknowledged, so it cannot
        block the stream; the good entry beside it is written."""
        keys = RedisKeys(key_prefix)
        await redis_client.xadd(keys.audit_stream, {STREAM_FIELD: b"\xff garbage"})
        await redis_client.xadd(keys.audit_stream, {STREAM_FIELD: encoder.encode(AuditEvent(action="good"))})
        writer = AuditWriter(pool, UserStoreMetrics())
        task = asyncio.create_task(writer.run())
        try:
            with capture_logs() as logs:
                assert await AuditStreamDrain(redis_client, keys, writer, "c").drain_once(block_ms=100) == 2
        finally:
            task.cancel()
        assert "audit_stream_entry_skipped" in [log["event"] for log in logs]
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT array_agg(action) FROM audit_events") == ["good"]
        assert (await redis_client.xpending(keys.audit_stream, keys.audit_group))["pending"] == 0

    async def test_publisher_never_raises_when_redis_is_away(self):
        """Publishing to a Redis that does not answer drops the event and counts it; the caller sees nothing."""
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
        publisher = AuditPublisher(client, RedisKeys("test-away"), max_pending=1)
        with capture_logs() as logs:
            assert publisher.publish(AuditEvent(action="a"))
            assert not publisher.publish(AuditEvent(action="b"))  # one in flight already: dropped at once
            await publisher.close(timeout=5)
        await client.aclose()
        assert publisher.dropped == 2
        # The XADD fails on the refused connection or, with the client's retries, on the publisher's timeout.
        assert [log["reason"] for log in logs][0] == "backlog_full" and len(logs) == 2


class TestRetention:
    async def test_prune_deletes_old_rows_in_batches(self, pool):
        """Rows older than the retention go, in statements of ``batch`` rows; newer rows stay."""
        old = datetime.now(UTC) - timedelta(days=200)
        async with pool.acquire() as conn:
            await insert_events(conn, [AuditEvent(action="old", at=old.timestamp()) for _ in range(5)])
            await insert_events(conn, [AuditEvent(action="new")])

        def delete(conn, limit):
            return delete_events_before(conn, 180, limit)

        assert await prune(pool, delete, batch=2) == 5
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT array_agg(action) FROM audit_events") == ["new"]
        assert await prune(pool, delete, batch=2) == 0


class TestWire:
    def test_a_job_from_an_older_gateway_still_decodes(self):
        """``CodeExchangeJob`` without ``client_ip`` (an older gateway's) decodes with an empty IP."""
        old = {
            "type": "code_exchange.v1", "job_id": "j", "request_id": "r", "client_id": "c", "code": "x",
            "reply_to": "s", "deadline": 1.0,
        }  # fmt: skip
        job = job_decoder.decode(msgspec.msgpack.encode(old))
        assert isinstance(job, CodeExchangeJob) and job.client_ip == ""
