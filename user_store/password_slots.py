"""At most ``PASSWORD_CHANGES_PER_USER`` password changes of one user in flight at once, across every user store.

Why not a counter per process: the stores run as several replicas behind one round-robin Service, so one user's
requests reach all of them, and a per-process cap let one account occupy every replica's argon2 slots at once. The
stores share only PostgreSQL, so a change holds a row of ``password_change_slots`` while its password is hashed:

- ``claim`` tries slot 0, 1, ... with one ``INSERT ... ON CONFLICT DO UPDATE WHERE expired``; a user with no other
  change in flight costs one short statement on a connection the caller already holds, and a concurrent claim of
  the same slot waits only for that statement's commit, then moves on to the next slot.
- Nothing is held during the hash: no transaction, no lock, no pool connection. ``release`` deletes the row; a
  store that dies first leaves it to expire after ``LEASE_S``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from shared.errors import MinidoorError, RateLimited
from user_store.db import Conn, Pool, connection
from user_store.queries.users import claim_password_slot, release_password_slot

log = structlog.get_logger()

#: Longer than any change takes (the gateway gives the store 5 s), short enough that a dead store's slot returns soon.
LEASE_S = 60.0


@dataclass(frozen=True, slots=True)
class Slot:
    user_id: uuid.UUID
    slot: int
    #: Whose claim this is: a release never frees a slot that expired and was claimed again by another change.
    holder: uuid.UUID


async def claim(conn: Conn, user_id: str, slots: int, *, lease_s: float = LEASE_S) -> Slot:
    """One of ``user_id``'s ``slots``; ``RateLimited`` (429) when every one is held by a live change."""
    uid, holder = uuid.UUID(user_id), uuid.uuid4()
    for slot in range(slots):
        if await claim_password_slot(conn, uid, slot, holder, lease_s):
            return Slot(uid, slot, holder)
    raise RateLimited(
        "more than {slots} password changes of this user at once; retry later", retry_after=1, slots=slots
    )


async def release(pool: Pool, slot: Slot) -> None:
    """Free ``slot``; a database that cannot be reached leaves it to its lease, the change itself went through."""
    try:
        async with connection(pool) as conn:
            await release_password_slot(conn, slot.user_id, slot.slot, slot.holder)
    except MinidoorError as exc:
        log.warning("password_slot_not_released", error=exc.description, lease_s=LEASE_S)
