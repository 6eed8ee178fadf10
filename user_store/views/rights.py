"""``/internal/account/{delete-account,delete-user,export-account}``: users' rights behind the gateway's routes of
the same names (``user_store/erasure.py`` does the work).

A user deletes its own account with its access token and a second proof: the access token of a login made with a
fresh wx.login() code at most ``PROOF_MAX_AGE`` seconds ago (the gateway ran it through the job stream), or its
password. The application (client credentials) or an ``isAdmin`` user deletes a user of its organization with
Casdoor's delete-user.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import structlog
from aiohttp import web

from shared.errors import BadRequest, Forbidden, MinidoorError
from shared.guard import log_id
from shared.messages import DeleteAccountRequest, DeleteUserRequest, DeletionResult, UserQuery
from user_store import erasure
from user_store.appkeys import AUDIT, PASSWORD_HASHING, PG_POOL, REVOCATIONS, SIGNER
from user_store.audit import event_from_context
from user_store.callers import Caller, authenticate, is_admin, require_user, split_id
from user_store.db import Conn, connection, transaction
from user_store.http import json_response, read_json
from user_store.queries.erasure import forget_event_addresses
from user_store.queries.users import find_user, user_by_id
from user_store.tokens import TokenInfo, inspect_token, revoke_family

log = structlog.get_logger()

_delete_account_decoder = msgspec.json.Decoder(DeleteAccountRequest)
_delete_user_decoder = msgspec.json.Decoder(DeleteUserRequest)
_query_decoder = msgspec.json.Decoder(UserQuery)
#: The proof login's token must be this fresh (seconds): a wx.login() code obtained for the deletion.
PROOF_MAX_AGE = 300


async def _caller(request: web.Request, conn: Conn, query: Any) -> Caller:
    caller = await authenticate(conn, request.app[SIGNER], query.credentials)
    structlog.contextvars.bind_contextvars(caller=caller.kind, client_id=log_id(caller.client_id))
    return caller


async def delete_account(request: web.Request) -> web.Response:
    """The bearer's own account, given a second proof; every token revoked, the data erased, a tombstone kept."""
    req = await read_json(request, _delete_account_decoder)
    if not req.proof_token and not req.password:
        raise BadRequest("deleting an account needs a fresh wx.login() code (code) or the account's password")
    pool, signer = request.app[PG_POOL], request.app[SIGNER]
    async with connection(pool) as conn:
        caller = await _caller(request, conn, req)
        user_id = require_user(caller, "delete-account")
        if req.proof_token:
            proof = await inspect_token(conn, signer, req.proof_token, "access")
        else:
            row = await user_by_id(conn, user_id)
            password_hash = row["password_hash"] if row is not None else None
    if req.proof_token:
        await _check_proof(request, proof, user_id)
        method = "wechat_code"
    else:
        if not password_hash or not await request.app[PASSWORD_HASHING].verify(password_hash, req.password):
            raise Forbidden("the password is wrong, or the account has none: prove it with a fresh wx.login() code")
        method = "password"
    async with transaction(pool) as conn:
        caller = await authenticate(conn, signer, req.credentials)  # again, under the lock: still live
        row = await user_by_id(conn, require_user(caller, "delete-account"), lock=True)
        assert row is not None, "a live token's user exists"
        erased = await erasure.delete_user(conn, request.app[REVOCATIONS], row["id"])
    await _audit(request, caller, str(row["id"]), row["organization"], erased, method)
    return json_response(DeletionResult(affected=True, revoked=erased.revoked, identities=erased.identities))


async def _check_proof(request: web.Request, proof: TokenInfo | None, user_id: str) -> None:
    """``Forbidden`` unless the proof login is the caller's own and fresh. A fresh login of another WeChat user (the
    phone switched accounts) is ended at once: it was made for this check only."""
    if proof is None:
        raise Forbidden("the wx.login() code did not prove the account: log in again and retry")
    if proof.user_id != user_id:
        async with transaction(request.app[PG_POOL]) as conn:
            await revoke_family(conn, request.app[REVOCATIONS], proof.family_id)
        raise Forbidden("the wx.login() code belongs to another WeChat user than the account to delete")
    if proof.issued_at < time.time() - PROOF_MAX_AGE:
        raise Forbidden("the proof login is too old: call wx.login() again for a fresh code")


async def delete_user(request: web.Request) -> web.Response:
    """Casdoor's delete-user: the application or an organization admin erases a user of its organization."""
    req = await read_json(request, _delete_user_decoder)
    async with transaction(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, req)
        if req.id:
            owner, name = split_id(req.id)
        elif req.owner and req.name:
            owner, name = req.owner, req.name
        else:
            raise BadRequest("name the user to delete: ?id=owner/name, or owner and name in the body")
        if not await is_admin(conn, caller, owner):
            if caller.is_user:
                raise Forbidden("only an administrator of organization {owner!r} may delete its users", owner=owner)
            raise Forbidden(
                "the application may only delete users of its organization {organization!r}",
                organization=caller.organization,
            )
        row = await find_user(conn, owner, "name", name, lock=True)
        if row is None:
            return json_response(DeletionResult(affected=False))  # Casdoor: "Unaffected"
        erased = await erasure.delete_user(conn, request.app[REVOCATIONS], row["id"])
    await _audit(request, caller, str(row["id"]), owner, erased, "admin")
    return json_response(DeletionResult(affected=True, revoked=erased.revoked, identities=erased.identities))


async def export_account(request: web.Request) -> web.Response:
    """Everything held about the bearer's user, secrets excluded."""
    query = await read_json(request, _query_decoder)
    async with connection(request.app[PG_POOL]) as conn:
        caller = await _caller(request, conn, query)
        document = await erasure.export_user(conn, require_user(caller, "export-account"))
    request.app[AUDIT].record(
        "account_exported",
        actor_kind="user",
        actor_id=caller.user_id,
        target_user_id=caller.user_id,
        organization=caller.organization,
        client_id=caller.client_id,
        details={"identities": len(document.identities), "events": len(document.events)},
    )
    return json_response(document)


async def _audit(
    request: web.Request, caller: Caller, user_id: str, organization: str, erased: erasure.Erased, method: str
) -> None:
    """``account_deleted``: who, which user id, counts and the proof's kind; no name, openid or client IP (the
    user's past events lose theirs too)."""
    event = event_from_context(
        "account_deleted",
        actor_kind="user" if caller.is_user else "client",
        actor_id=caller.user_id if caller.is_user else caller.client_id,
        target_user_id=user_id,
        organization=organization,
        client_id=caller.client_id,
        details={"revoked": erased.revoked, "identities": erased.identities, "proof": method},
    )
    structlog.contextvars.bind_contextvars(user_id=user_id, revoked=erased.revoked)
    try:
        # Written before the answer; then the events queued before it (the proof's login, say) are committed too,
        # and a second pass takes their client IP away.
        await request.app[AUDIT].add_and_wait([msgspec.structs.replace(event, client_ip="")])
        async with connection(request.app[PG_POOL]) as conn:
            await forget_event_addresses(conn, uuid.UUID(user_id))
    except MinidoorError as exc:  # the deletion is committed: its answer stands, the line says what is missing
        log.warning("deletion_audit_incomplete", user_id=user_id, error=exc.description)
