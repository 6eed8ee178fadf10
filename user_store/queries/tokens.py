"""Token rows: one per access/refresh pair, holding their hashes, never the tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from user_store.db import Conn
from user_store.queries import translate


async def insert_token(
    conn: Conn,
    *,
    token_id: uuid.UUID,
    family_id: uuid.UUID,
    application_id: Any,
    user_id: Any,
    access_hash: bytes,
    refresh_hash: bytes,
    scope: str,
    session_key: str,
    expires_at: datetime,
    refresh_expires_at: datetime,
    session_key_sealed: bytes | None = None,
) -> None:
    with translate("token"):
        await conn.execute(
            """
            INSERT INTO tokens (id, family_id, application_id, user_id, access_hash, refresh_hash, scope,
                                session_key, expires_at, refresh_expires_at, session_key_sealed)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            """,
            token_id,
            family_id,
            application_id,
            user_id,
            access_hash,
            refresh_hash,
            scope,
            session_key,
            expires_at,
            refresh_expires_at,
            session_key_sealed,
        )
