"""The ``avatars`` table: one uploaded avatar per user (``user_store/avatars.py``)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import asyncpg

from user_store.db import Conn
from user_store.queries import translate

if TYPE_CHECKING:
    from user_store.avatars import CleanImage


async def upsert_avatar(conn: Conn, user_id: str, avatar_id: str, image: CleanImage) -> None:
    """Store ``image`` as ``user_id``'s avatar under ``avatar_id``, replacing the one it had."""
    with translate("avatar"):
        await conn.execute(
            """
            INSERT INTO avatars (user_id, id, content_type, content, etag, width, height)
            VALUES ($1::uuid, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (user_id) DO UPDATE
            SET id = excluded.id, content_type = excluded.content_type, content = excluded.content,
                etag = excluded.etag, width = excluded.width, height = excluded.height, created_at = now()
            """,
            user_id,
            avatar_id,
            image.content_type,
            image.content,
            hashlib.sha256(image.content).hexdigest(),
            image.width,
            image.height,
        )


async def avatar_by_id(conn: Conn, avatar_id: str) -> asyncpg.Record | None:
    with translate("avatar"):
        # An avatar waiting for content safety's verdict is served too: WeChat downloads it from its URL.
        return await conn.fetchrow(
            """
            SELECT content, content_type, etag FROM avatars WHERE id = $1
            UNION ALL
            SELECT content, content_type, etag FROM avatar_reviews WHERE id = $1 AND NOT shown
            LIMIT 1
            """,
            avatar_id,
        )


async def delete_avatar(conn: Conn, user_id: str) -> bool:
    with translate("avatar"):
        return await conn.fetchval("DELETE FROM avatars WHERE user_id = $1::uuid RETURNING true", user_id) is not None
