"""``avatar_reviews`` and ``content_verdicts`` (migration 0014), and the openid content security is asked about
(``user_store/content_safety.py``)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import asyncpg

from user_store.db import Conn
from user_store.queries import translate
from user_store.queries.applications import PROVIDER_TYPE

if TYPE_CHECKING:
    from user_store.avatars import CleanImage

#: A review's columns a verdict works with (not its bytes).
_REVIEW = "id, user_id, client_id, url, trace_id, shown, previous_avatar, previous_id"


async def subject(conn: Conn, client_id: str, user_id: str) -> asyncpg.Record | None:
    """The AppID of the application's first mini program and the user's openid in it (NULL when it has none); no
    row when no application has ``client_id``."""
    with translate("application"):
        return await conn.fetchrow(
            """
            SELECT p.appid, wi.openid
            FROM applications a
            JOIN LATERAL (
                SELECT p.appid FROM application_providers ap JOIN providers p ON p.id = ap.provider_id
                WHERE ap.application_id = a.id AND p.type = $3 ORDER BY ap.position LIMIT 1
            ) p ON true
            LEFT JOIN users u ON u.id = $2::uuid AND u.erased_at IS NULL
            LEFT JOIN wechat_identities wi ON wi.user_id = u.id AND wi.appid = p.appid
            WHERE a.client_id = $1
            """,
            client_id,
            user_id,
            PROVIDER_TYPE,
        )


async def content_safety_of(conn: Conn, client_id: str) -> bool:
    with translate("application"):
        return bool(await conn.fetchval("SELECT content_safety FROM applications WHERE client_id = $1", client_id))


async def insert_review(conn: Conn, review_id: str, user_id: str, client_id: str, image: CleanImage, url: str) -> None:
    """A new pending avatar; the user's older ones still pending are superseded (only the newest may become theirs)."""
    with translate("avatar"):
        await conn.execute("DELETE FROM avatar_reviews WHERE user_id = $1::uuid AND NOT shown", user_id)
        await conn.execute(
            """
            INSERT INTO avatar_reviews (id, user_id, client_id, content_type, content, etag, width, height, url)
            VALUES ($1, $2::uuid, $3, $4, $5, $6, $7, $8, $9)
            """,
            review_id,
            user_id,
            client_id,
            image.content_type,
            image.content,
            hashlib.sha256(image.content).hexdigest(),
            image.width,
            image.height,
            url,
        )


async def set_trace(conn: Conn, review_id: str, trace_id: str) -> asyncpg.Record | None:
    with translate("avatar review"):
        return await conn.fetchrow(
            f"UPDATE avatar_reviews SET trace_id = $2 WHERE id = $1 AND trace_id IS NULL RETURNING {_REVIEW}",
            review_id,
            trace_id,
        )


async def lock_trace(conn: Conn, trace_id: str) -> None:
    """Serialize the two writers of a trace's verdict (the push, the trace's recording) until the commit."""
    with translate("avatar review"):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('avatar-trace:' || $1, 0))", trace_id)


async def review_by_trace(conn: Conn, trace_id: str, appid: str) -> asyncpg.Record | None:
    """The review WeChat's verdict for ``trace_id`` decides, if it is of an application of mini program ``appid``."""
    with translate("avatar review"):
        return await conn.fetchrow(
            f"""
            SELECT {_REVIEW} FROM avatar_reviews r
            WHERE trace_id = $1 AND EXISTS (
                SELECT 1 FROM applications a
                JOIN application_providers ap ON ap.application_id = a.id
                JOIN providers p ON p.id = ap.provider_id
                WHERE a.client_id = r.client_id AND p.appid = $2
            )
            FOR UPDATE OF r
            """,
            trace_id,
            appid,
        )


async def forget_as_previous(conn: Conn, review_id: str) -> None:
    """A refused avatar is nobody's avatar to go back to."""
    with translate("avatar review"):
        await conn.execute(
            """
            UPDATE avatar_reviews SET previous_id = NULL, previous_avatar = '', content = ''
            WHERE previous_id = $1
            """,
            review_id,
        )


async def delete_review(conn: Conn, review_id: str) -> bool:
    with translate("avatar review"):
        return await conn.fetchval("DELETE FROM avatar_reviews WHERE id = $1 RETURNING true", review_id) is not None


async def save_verdict(conn: Conn, trace_id: str, suggest: str, label: int) -> None:
    with translate("content verdict"):
        await conn.execute(
            "INSERT INTO content_verdicts (trace_id, suggest, label) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            trace_id,
            suggest,
            label,
        )


async def take_verdict(conn: Conn, trace_id: str) -> asyncpg.Record | None:
    with translate("content verdict"):
        return await conn.fetchrow(
            "DELETE FROM content_verdicts WHERE trace_id = $1 RETURNING suggest, label", trace_id
        )


async def show_review(conn: Conn, review: asyncpg.Record) -> str:
    """Make the reviewed avatar its user's (stored in ``avatars``, the user's ``avatar`` its URL); returns the avatar
    the user had."""
    with translate("avatar"):
        previous = await conn.fetchval(
            "SELECT avatar FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE", review["user_id"]
        )
        if previous is None:
            return ""
        await conn.execute(
            """
            INSERT INTO avatars (user_id, id, content_type, content, etag, width, height)
            SELECT user_id, id, content_type, content, etag, width, height FROM avatar_reviews WHERE id = $1
            ON CONFLICT (user_id) DO UPDATE
            SET id = excluded.id, content_type = excluded.content_type, content = excluded.content,
                etag = excluded.etag, width = excluded.width, height = excluded.height, created_at = now()
            """,
            review["id"],
        )
        await conn.execute(
            "UPDATE users SET avatar = $2, updated_at = now() WHERE id = $1", review["user_id"], review["url"]
        )
        return str(previous)


async def show_unchecked(conn: Conn, review: asyncpg.Record) -> None:
    """The timeout policy ``show``: the avatar becomes the user's before any verdict, and its review keeps the user's
    previous avatar (URL, and the uploaded one's bytes) for a late risky verdict to put back."""
    with translate("avatar"):
        previous = await conn.fetchrow(
            "SELECT id, content_type, content, etag, width, height FROM avatars WHERE user_id = $1", review["user_id"]
        )
        previous_avatar = await show_review(conn, review)
        if previous is None:
            await conn.execute(
                "UPDATE avatar_reviews SET shown = true, previous_avatar = $2, content = '' WHERE id = $1",
                review["id"],
                previous_avatar,
            )
            return
        await conn.execute(
            """
            UPDATE avatar_reviews
            SET shown = true, previous_avatar = $2, previous_id = $3, content_type = $4, content = $5, etag = $6,
                width = $7, height = $8
            WHERE id = $1
            """,
            review["id"],
            previous_avatar,
            previous["id"],
            previous["content_type"],
            previous["content"],
            previous["etag"],
            previous["width"],
            previous["height"],
        )


async def revert_shown(conn: Conn, review: asyncpg.Record) -> None:
    """Take back an avatar the timeout policy showed: the user's avatar is what it was (its bytes too), if the shown
    one is still theirs."""
    with translate("avatar"):
        current = await conn.fetchval("DELETE FROM avatars WHERE id = $1 RETURNING true", review["id"])
        if current and review["previous_id"] is not None:
            await conn.execute(
                """
                INSERT INTO avatars (user_id, id, content_type, content, etag, width, height)
                SELECT user_id, previous_id, content_type, content, etag, width, height FROM avatar_reviews
                WHERE id = $1
                ON CONFLICT (user_id) DO NOTHING
                """,
                review["id"],
            )
        await conn.execute(
            "UPDATE users SET avatar = $3, updated_at = now() WHERE id = $1 AND avatar = $2",
            review["user_id"],
            review["url"],
            review["previous_avatar"],
        )


async def due_reviews(conn: Conn, timeout_s: float, limit: int) -> list[asyncpg.Record]:
    """Pending avatars no verdict decided within ``timeout_s``, locked for this sweep (others skip them)."""
    with translate("avatar review"):
        return list(
            await conn.fetch(
                f"""
                SELECT {_REVIEW} FROM avatar_reviews
                WHERE NOT shown AND created_at < now() - make_interval(secs => $1)
                ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
                """,
                timeout_s,
                limit,
            )
        )


async def prune_stale(conn: Conn, age_s: float) -> int:
    """Forget shown avatars' reviews and early verdicts older than ``age_s``: no verdict comes that late."""
    with translate("avatar review"):
        shown: Any = await conn.execute(
            "DELETE FROM avatar_reviews WHERE shown AND created_at < now() - make_interval(secs => $1)", age_s
        )
        verdicts: Any = await conn.execute(
            "DELETE FROM content_verdicts WHERE received_at < now() - make_interval(secs => $1)", age_s
        )
    return int(shown.split()[-1]) + int(verdicts.split()[-1])


async def delete_user_reviews(conn: Conn, user_id: Any) -> None:
    with translate("avatar review"):
        await conn.execute("DELETE FROM avatar_reviews WHERE user_id = $1", user_id)
