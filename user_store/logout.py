"""Logout: the login (the whole refresh family) of each token presented is revoked (``/api/logout``)."""

from __future__ import annotations

import uuid

import asyncpg
import structlog

from shared.errors import InvalidToken
from user_store.audit import AuditWriter
from user_store.db import Pool, transaction
from user_store.queries.tokens import token_owner
from user_store.revocations import Revocations
from user_store.tokens import FoundToken, find_token, revoke_family


async def logout(
    pool: Pool, revocations: Revocations, tokens: list[str], audit: AuditWriter | None = None
) -> tuple[str, int]:
    """Revoke the login (the whole refresh family) of each token; returns ``owner/name`` and how many rows died.

    A token is found by its sha256 among those we issued, so only the exact string we minted matches; one already
    revoked or expired still does (logging out twice is fine). Anything else is ``InvalidToken``.
    """
    user, count = "", 0
    events: list[tuple[asyncpg.Record, FoundToken, int]] = []
    async with transaction(pool) as conn:
        for token in dict.fromkeys(tokens):
            found = await find_token(conn, token)
            if found is None:
                raise InvalidToken("the token is not one minidoor issued; nothing to log out")
            # The row exists: find_token just read it in this transaction.
            owner = await token_owner(conn, uuid.UUID(found.token_id))
            user = f"{owner['organization']}/{owner['name']}"
            revoked = len(await revoke_family(conn, revocations, found.family_id))
            count += revoked
            events.append((owner, found, revoked))
    structlog.contextvars.bind_contextvars(revoked=count)
    if audit is not None:
        for owner, found, revoked in events:
            audit.record(
                "logout",
                actor_kind="user",
                actor_id=str(owner["id"]),
                target_user_id=str(owner["id"]),
                organization=owner["organization"],
                client_id=found.client_id,
                details={"family_id": found.family_id, "revoked": revoked},
            )
    return user, count
