"""Users' rights: erasing a user (account deletion) and reading out what is held about one (data export).

``erase_user_data`` is the one place where a user's data is erased: whatever a later table holds about a user (an
avatar, a linked phone, ...) is deleted there too, so every way of deleting an account (``POST
/api/delete-account``, Casdoor's ``POST /api/delete-user``, ``make delete-user``) erases it. ``delete_user`` revokes
every token of the user first, in the same transaction, and broadcasts the revocations before the commit
(``Revocations.announce``), so no verifier accepts them a second after.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.messages import AccountExport, ExportedApplication, ExportedEvent, ExportedIdentity
from user_store import users
from user_store.db import Conn
from user_store.queries import erasure as queries
from user_store.queries.avatars import delete_avatar
from user_store.queries.content_safety import delete_user_reviews
from user_store.revocations import Revocations
from user_store.tokens import revoke_user_tokens

#: How many of the user's latest audit events an export lists.
EXPORT_EVENTS = 200


@dataclass(frozen=True, slots=True)
class Erased:
    """What a deletion did, in counts (an audit entry's details: no personal data)."""

    revoked: int
    identities: int


async def erase_user_data(conn: Conn, user_id: uuid.UUID) -> int:
    """Erase everything held about the user but its tombstone; returns how many WeChat identities it had. Run in the
    transaction that revoked its tokens (``delete_user``). Extend it when a table holds more about a user."""
    identities = await queries.delete_identities(conn, user_id)
    await queries.blank_token_session_keys(conn, user_id)
    await queries.delete_password_slots(conn, user_id)
    await delete_avatar(conn, str(user_id))
    await delete_user_reviews(conn, user_id)
    await queries.forget_event_addresses(conn, user_id)
    await queries.tombstone_user(conn, user_id)
    return identities


async def delete_user(conn: Conn, revocations: Revocations, user_id: uuid.UUID | str) -> Erased:
    """Revoke every token of the user (broadcast to every verifier), then erase its data; in the caller's
    transaction, which holds the user's row (``FOR UPDATE``) so no login or refresh of it runs meanwhile."""
    user_uuid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(user_id)
    revoked = await revoke_user_tokens(conn, revocations, user_uuid)
    identities = await erase_user_data(conn, user_uuid)
    return Erased(revoked=len(revoked), identities=identities)


async def export_user(conn: Conn, user_id: str) -> AccountExport:
    """Everything held about the user: its profile, WeChat identities, applications and recent audit events."""
    user_uuid = uuid.UUID(user_id)
    row = await users.user_by_id(conn, user_id)
    identities = await queries.identities(conn, user_uuid)
    applications = await queries.linked_applications(conn, user_uuid)
    events = await queries.recent_events(conn, user_uuid, EXPORT_EVENTS)
    return AccountExport(
        exported_time=users.casdoor_time(datetime.now(UTC)),
        user=users.casdoor_user(row),
        organization=row["organization"],
        identities=[
            ExportedIdentity(
                appid=item["appid"],
                openid=item["openid"],
                unionid=item["unionid"],
                created_time=users.casdoor_time(item["created_at"]),
                updated_time=users.casdoor_time(item["updated_at"]),
            )
            for item in identities
        ],
        applications=[
            ExportedApplication(
                name=item["name"],
                client_id=item["client_id"],
                first_sign_in=users.casdoor_time(item["first_sign_in"]),
                last_sign_in=users.casdoor_time(item["last_sign_in"]),
                live_logins=int(item["live_logins"]),
            )
            for item in applications
        ],
        events=[
            ExportedEvent(
                time=users.casdoor_time(item["at"]),
                action=item["action"],
                outcome=item["outcome"],
                application=item["application"],
                client_id=item["client_id"],
                client_ip=item["client_ip"] or "",
                details=dict(item["details"]),
            )
            for item in events
        ],
    )
