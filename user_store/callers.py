"""Who calls an account endpoint, and what they may do to which user.

A caller is a user, by a live access token (``tokens.inspect_token``: signature, row, revocation, user state), or
an application, by its client credentials, acting for the application on the users of its organization. A user
may read and update itself; an ``isAdmin`` user may read and update every user of its organization, admin fields
included, and so may an application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg

from shared.errors import PLEASE_LOGIN, BadRequest, Forbidden, InvalidToken, NotFound, Unauthorized
from shared.messages import Credentials
from user_store.db import Conn
from user_store.queries.applications import application_organization
from user_store.queries.users import Lookup, find_user, is_admin_user
from user_store.signing_keys.signer import Signer
from user_store.tokens import TokenInfo, authenticate_client, inspect_token


@dataclass(frozen=True, slots=True)
class Caller:
    kind: Literal["user", "application"]
    #: The organization whose users the caller may act on (a user's own organization, an application's).
    organization: str
    client_id: str
    #: The caller's own user id; empty for an application.
    user_id: str = ""
    token: TokenInfo | None = None

    @property
    def is_user(self) -> bool:
        return self.kind == "user"


async def authenticate(conn: Conn, signer: Signer, credentials: Credentials) -> Caller:
    """The caller these credentials prove; ``Unauthorized`` (401) when they prove nobody."""
    if credentials.access_token:
        info = await inspect_token(conn, signer, credentials.access_token, "access")
        if info is None:
            raise InvalidToken("the access token is invalid, expired or revoked; log in again")
        return Caller(
            kind="user", organization=info.organization, client_id=info.client_id, user_id=info.user_id, token=info
        )
    if credentials.client_id or credentials.client_secret:
        if not credentials.client_id or not credentials.client_secret:
            raise Unauthorized("send both clientId and clientSecret (or HTTP Basic), or a bearer access token")
        app = await authenticate_client(conn, credentials.client_id, credentials.client_secret)
        org = await application_organization(conn, app["id"])
        return Caller(kind="application", organization=org, client_id=app["client_id"])
    raise Unauthorized(PLEASE_LOGIN)


def require_user(caller: Caller, what: str) -> str:
    """The caller's user id; ``Unauthorized`` for an application, which has no account of its own."""
    if not caller.is_user:
        raise Unauthorized(
            "{what} needs a user's access token (Authorization: Bearer ...), not client credentials", what=what
        )
    return caller.user_id


async def is_admin(conn: Conn, caller: Caller, organization: str) -> bool:
    """Whether the caller administers ``organization``: its application, or an ``isAdmin`` user of it."""
    if caller.organization != organization:
        return False
    if not caller.is_user:
        return True
    return await is_admin_user(conn, caller.user_id)


async def find_target(
    conn: Conn, caller: Caller, owner: str, by: Lookup, value: str, action: str, *, lock: bool = False
) -> tuple[asyncpg.Record, bool]:
    """The user ``caller`` wants to ``action`` and whether the caller acts as its admin. ``Forbidden`` for anyone
    else's user before ``NotFound``, so a refusal never tells whether a user exists."""
    admin = await is_admin(conn, caller, owner)
    row = await find_user(conn, owner, by, value, lock=lock)
    if not admin:
        if not caller.is_user:
            raise Forbidden(
                "the application may only {action} users of its organization {organization!r}",
                action=action,
                organization=caller.organization,
            )
        if row is None or str(row["id"]) != caller.user_id:
            raise Forbidden("a user may only {action} itself; other users need an administrator", action=action)
    if row is None:
        raise NotFound("the user {value!r} does not exist in organization {owner!r}", value=value, owner=owner)
    return row, admin


def forbid_listing(caller: Caller, owner: str) -> Forbidden:
    if not caller.is_user:
        return Forbidden(
            "the application may only list users of its organization {organization!r}", organization=caller.organization
        )
    return Forbidden("only an administrator of organization {owner!r} may list its users", owner=owner)


def split_id(value: str) -> tuple[str, str]:
    """``owner/name`` -> ``(owner, name)``; ``BadRequest`` otherwise."""
    owner, sep, name = value.partition("/")
    if not sep or not owner or not name:
        raise BadRequest("id must be owner/name, not {value!r}", value=value)
    return owner, name
