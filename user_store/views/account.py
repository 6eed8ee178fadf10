"""``/internal/account/*``: the internal endpoints behind the gateway's account API (``shared/user_store_client.py``
lists them).

Each request carries the caller's credentials as the gateway received them; the caller is authenticated here, in
the same request as the operation (``callers.authenticate``), so a revoked token or a forbidden user is refused at
once, on every gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import web

from shared.errors import PLEASE_LOGIN, BadRequest, Conflict, Unauthorized
from shared.guard import log_id
from shared.messages import (
    Account,
    LogoutRequest,
    LogoutResult,
    UpdateResult,
    UserInfo,
    UserList,
    UserQuery,
    UserUpdate,
)
from user_store import password_slots, users
from user_store.appkeys import AUDIT, CONFIG, PASSWORD_HASHING, PG_POOL, REVOCATIONS, RULES, SIGNER
from user_store.callers import (
    Caller,
    authenticate,
    find_target,
    forbid_listing,
    is_admin,
    require_user,
    split_id,
)
from user_store.db import Conn, connection, transaction
from user_store.http import json_response, read_json
from user_store.logout import logout as logout_tokens
from user_store.queries.content_safety import content_safety_of
from user_store.queries.users import Lookup, list_users, taken_by, write_user
from user_store.tokens import revoke_user_tokens
from user_store.user_updates import parse_columns, plan_changes

_query_decoder = msgspec.json.Decoder(UserQuery)
_update_decoder = msgspec.json.Decoder(UserUpdate)
_logout_decoder = msgspec.json.Decoder(LogoutRequest)
#: A page of get-users is at most this long.
MAX_PAGE_SIZE = 1000


async def _caller(request: web.Request, conn: Conn, query: UserQuery | UserUpdate | LogoutRequest) -> Caller:
    caller = await authenticate(conn, request.app[SIGNER], query.credentials)
    structlog.contextvars.bind_contextvars(caller=caller.kind, client_id=log_id(caller.client_id))
    return caller


async def get_account(request: web.Request) -> web.Response:
    """The caller's own user and organization."""
    query = await read_json(request, _query_decoder)
    async with connection(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, query)
        user = await users.user_by_id(conn, require_user(caller, "get-account"))
        org = await users.organization(conn, user["organization"])
    return json_response(Account(user=users.casdoor_user(user), organization=users.casdoor_organization(org)))


async def userinfo(request: web.Request) -> web.Response:
    """OIDC claims of the caller: ``sub``, ``iss``, ``aud``, the profile claims, and ``email``/``phone`` when set."""
    query = await read_json(request, _query_decoder)
    async with connection(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, query)
        user = await users.user_by_id(conn, require_user(caller, "userinfo"))
    assert caller.token is not None
    profile = "profile" in caller.token.scope.split()
    return json_response(
        UserInfo(
            sub=str(user["id"]),
            iss=caller.token.issuer,
            aud=caller.token.client_id,
            preferred_username=user["name"] if profile else "",
            name=user["display_name"] if profile else "",
            picture=user["avatar"] if profile else "",
            email=user["email"],
            phone=user["phone"],
        )
    )


async def get_user(request: web.Request) -> web.Response:
    """One user by ``owner/name``, or by ``owner`` plus ``userId``, ``email`` or ``phone``."""
    query = await read_json(request, _query_decoder)
    async with connection(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, query)
        owner, by, value = _lookup(query)
        row, _admin = await find_target(conn, caller, owner, by, value, "read")
    return json_response(users.casdoor_user(row))


def _lookup(query: UserQuery) -> tuple[str, Lookup, str]:
    if query.id:
        owner, name = split_id(query.id)
        return owner, "name", name
    lookups: list[tuple[Lookup, str]] = [("id", query.user_id), ("email", query.email), ("phone", query.phone)]
    given = [(by, value) for by, value in lookups if value]
    if not query.owner or len(given) != 1:
        raise BadRequest("name the user: id=owner/name, or owner with one of userId, email or phone")
    return query.owner, *given[0]


async def get_users(request: web.Request) -> web.Response:
    """The users of ``owner`` (default: the caller's organization), for its admins and its applications."""
    query = await read_json(request, _query_decoder)
    async with connection(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, query)
        if query.page < 0 or not 0 <= query.page_size <= MAX_PAGE_SIZE:
            raise BadRequest("p must be 1 or more and pageSize 1 to {max_page_size}", max_page_size=MAX_PAGE_SIZE)
        owner = query.owner or caller.organization
        if not await is_admin(conn, caller, owner):
            raise forbid_listing(caller, owner)
        limit = query.page_size or None
        offset = (max(query.page, 1) - 1) * query.page_size
        rows, total = await list_users(conn, owner, limit=limit, offset=offset)
    return json_response(UserList(users=[users.casdoor_user(row) for row in rows], total=total))


async def update_user(request: web.Request) -> web.Response:
    """Casdoor's update-user, as a partial update: only the fields in ``columns``, else in the body, change."""
    update = await read_json(request, _update_decoder)
    password_hash = await _hash_new_password(request, update)
    async with transaction(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, update)
        columns = parse_columns(update.columns)
        owner, by, value = _target(caller, update)
        row, admin = await find_target(conn, caller, owner, by, value, "update", lock=True)
        changes = plan_changes(dict(row), update.user, columns, admin=admin, rules=request.app[RULES])
        if caller.kind == "user" and changes.values.get("avatar") and await content_safety_of(conn, caller.client_id):
            # Only an upload is screened (``user_store/content_safety.py``): a URL set here would skip it.
            raise BadRequest("this application screens avatars: upload one with upload-avatar instead of a URL")
        if changes.password is not None and (password_hash is None or password_hash[0] != str(row["id"])):
            # The row changed between the unlocked check and the lock (another user now has that name).
            raise Conflict("the user changed during the update; retry")
        for field in ("name", "email", "phone"):
            new = changes.values.get(field)
            if new and await taken_by(conn, row, field, new):
                # A name is public in its organization; another user's email or phone is not, so it is not echoed.
                if field == "name":
                    raise Conflict("name {name!r} already exists in organization {owner!r}", name=new, owner=owner)
                raise Conflict("that {field} already exists in organization {owner!r}", field=field, owner=owner)
        values = dict(changes.values)
        if changes.password is not None and password_hash is not None:
            values["password_hash"] = password_hash[1]
        if values:
            await write_user(conn, row["id"], values)
        revoked = 0
        if values.get("is_forbidden") or values.get("is_deleted"):
            # As Casdoor: a forbidden or deleted user's tokens die with the change.
            revoked = len(await revoke_user_tokens(conn, request.app[REVOCATIONS], row["id"]))
    structlog.contextvars.bind_contextvars(user_id=str(row["id"]), changed=sorted(values))
    _audit_update(request, caller, row, owner, changes.values, password=changes.password is not None, revoked=revoked)
    return json_response(UpdateResult(affected=bool(values)))


async def _hash_new_password(request: web.Request, update: UserUpdate) -> tuple[str, str] | None:
    """``(user id, hash)`` when the update sets a password, else None. The caller and the target are checked first
    on a short connection without a lock, then the hash is computed holding no connection: tens of milliseconds
    of argon2 must not hold a row lock or a pool slot that other tenants need. ``update_user`` checks both again
    under the lock."""
    if "password" not in update.user:
        return None
    pool = request.app[PG_POOL]
    async with connection(pool) as conn:
        caller = await authenticate(conn, request.app[SIGNER], update.credentials)
        columns = parse_columns(update.columns)
        owner, by, value = _target(caller, update)
        row, admin = await find_target(conn, caller, owner, by, value, "update")
        changes = plan_changes(dict(row), update.user, columns, admin=admin, rules=request.app[RULES])
        if changes.password is None:
            return None
        user_id = str(row["id"])
        slot = await password_slots.claim(conn, user_id, request.app[CONFIG].password_changes_per_user)
    try:
        return user_id, await request.app[PASSWORD_HASHING].hash(changes.password)
    finally:
        await password_slots.release(pool, slot)


def _audit_update(
    request: web.Request,
    caller: Caller,
    row: asyncpg.Record,
    owner: str,
    values: Mapping[str, Any],
    *,
    password: bool,
    revoked: int,
) -> None:
    """A profile change names its columns, never their values (an email or a phone is personal data); a password
    change is an event of its own, so ``make audit`` shows it plainly."""
    who = {
        "actor_kind": "user" if caller.is_user else "client",
        "actor_id": caller.user_id if caller.is_user else caller.client_id,
        "target_user_id": str(row["id"]),
        "organization": owner,
        "client_id": caller.client_id,
    }
    audit = request.app[AUDIT]
    if values:
        details: dict[str, Any] = {"fields": sorted(values)}
        if revoked:
            details["revoked"] = revoked
        audit.record("user_updated", details=details, **who)
    if password:
        audit.record("password_changed", **who)


def _target(caller: Caller, update: UserUpdate) -> tuple[str, Lookup, str]:
    """``(owner, lookup, value)``: ``id``, else ``owner`` + ``userId``, else the body's owner and name, else the
    caller itself."""
    if update.id:
        owner, name = split_id(update.id)
        return owner, "name", name
    if update.user_id:
        return update.owner or caller.organization, "id", update.user_id
    body_owner, body_name = update.user.get("owner"), update.user.get("name")
    if isinstance(body_owner, str) and isinstance(body_name, str) and body_owner and body_name:
        return body_owner, "name", body_name
    if caller.is_user:
        return caller.organization, "id", caller.user_id
    raise BadRequest("name the user to update: ?id=owner/name, or owner and name in the body")


async def logout(request: web.Request) -> web.Response:
    """Revoke the login of ``id_token_hint`` and of the bearer token, whichever were given."""
    req = await read_json(request, _logout_decoder)
    tokens = [token for token in (req.id_token_hint, req.credentials.access_token) if token]
    if not tokens:
        raise Unauthorized(
            "logout needs the user's access token (Authorization: Bearer ...) or id_token_hint"
            if req.credentials.client_id
            else PLEASE_LOGIN
        )
    user, revoked = await logout_tokens(request.app[PG_POOL], request.app[REVOCATIONS], tokens, request.app[AUDIT])
    return json_response(LogoutResult(user=user, revoked=revoked))
