"""``audit_events``: the writer's multi-row INSERT, the prune's bounded DELETE and ``make audit``'s cursor."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from shared.messages import AuditEvent
from user_store.db import Conn
from user_store.queries import translate

_MAX_TEXT = 256

_json_encoder = msgspec.json.Encoder()

_INSERT = """
    INSERT INTO audit_events (at, action, outcome, actor_kind, actor_id, target_user_id, organization, application,
                              client_id, client_ip, request_id, details)
    SELECT at, action, outcome, actor_kind, actor_id, target_user_id, organization, application, client_id, client_ip,
           request_id, details::jsonb
    FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
                $8::text[], $9::text[], $10::inet[], $11::text[], $12::text[])
         AS e(at, action, outcome, actor_kind, actor_id, target_user_id, organization, application, client_id,
              client_ip, request_id, details)
"""


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value) if value else None
    except ValueError:
        return None


def _columns(events: Sequence[AuditEvent]) -> list[list[Any]]:
    """One array per column of ``_INSERT``; text is cut to a bounded length (stream events come from other
    processes), and an id or IP that does not parse is stored as NULL rather than failing the batch."""
    now = datetime.now(UTC)
    cols: list[list[Any]] = [[] for _ in range(12)]
    for e in events:
        row = (
            datetime.fromtimestamp(e.at, UTC) if e.at > 0 else now,
            e.action[:_MAX_TEXT],
            e.outcome[:_MAX_TEXT],
            e.actor_kind[:_MAX_TEXT],
            e.actor_id[:_MAX_TEXT],
            _uuid(e.target_user_id),
            e.organization[:_MAX_TEXT],
            e.application[:_MAX_TEXT],
            e.client_id[:_MAX_TEXT],
            _ip(e.client_ip),
            e.request_id[:_MAX_TEXT],
            # Encoded here, not by a pool codec: the admin CLI's plain connection writes through this too.
            _json_encoder.encode(e.details).decode(),
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


async def insert_events(conn: Conn, events: Sequence[AuditEvent]) -> None:
    """One INSERT for all of ``events``."""
    if events:
        with translate("audit event"):
            await conn.execute(_INSERT, *_columns(events))


async def delete_events_before(conn: Conn, retention_days: int, limit: int) -> int:
    """Delete at most ``limit`` of the oldest events older than ``retention_days``; returns how many went."""
    with translate("audit event"):
        status = await conn.execute(
            """
            DELETE FROM audit_events WHERE id IN (
                SELECT id FROM audit_events WHERE at < now() - make_interval(days => $1) ORDER BY at LIMIT $2
            )
            """,
            retention_days,
            limit,
        )
    return int(status.split()[-1])


async def event_rows(conn: Conn, *, organization: str, since: datetime | None) -> AsyncIterator[asyncpg.Record]:
    """The events of ``organization`` (all when empty) since ``since``, oldest first, with ``target_user_id``,
    ``client_ip`` and ``details`` as text; read through a cursor (call inside a transaction)."""
    query = """
        SELECT at, action, outcome, actor_kind, actor_id, target_user_id::text AS target_user_id, organization,
               application, client_id, host(client_ip) AS client_ip, request_id, details::text AS details
        FROM audit_events
        WHERE ($1 = '' OR organization = $1) AND ($2::timestamptz IS NULL OR at >= $2)
        ORDER BY at, id
    """
    with translate("audit event"):
        async for row in conn.cursor(query, organization, since):
            yield row
