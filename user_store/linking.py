"""Linking a WeChat identity to an existing account (``POST /api/link-wechat``, through a worker that exchanged the
wx.login() code) and unlinking it (``POST /api/unlink-wechat``), never removing a user's last way to sign in: a WeChat
identity, a phone number or a password. An identity another user has is refused with 409, naming no one."""

from __future__ import annotations

import structlog

from shared.errors import BadRequest, Conflict, Forbidden, InvalidToken, NotFound, Unauthorized
from shared.messages import LinkResult, UnlinkWechat, WechatLink
from user_store.audit import AuditWriter
from user_store.callers import authenticate, require_user
from user_store.db import Pool, transaction
from user_store.logins import MAX_ID, _lock_key
from user_store.master_key import MasterKey
from user_store.phone_logins import IDENTITY_TAKEN
from user_store.queries.applications import login_application, miniprogram_provider
from user_store.queries.users import (
    Identity,
    delete_identities,
    insert_identity,
    lock_keys,
    refresh_identity,
    sign_in_methods,
    user_by_id,
    user_by_openid,
)
from user_store.session_keys import identity_row, session_key_columns
from user_store.signing_keys.signer import Signer

LAST_METHOD = "this is the account's last way to sign in (no other WeChat identity, phone number or password)"


async def link_wechat(
    pool: Pool, link: WechatLink, audit: AuditWriter | None = None, master: MasterKey | None = None
) -> LinkResult:
    if not link.openid or len(link.openid) > MAX_ID or len(link.unionid) > MAX_ID or len(link.session_key) > MAX_ID:
        raise BadRequest(
            "openid must be 1 to {max_id} characters, unionid and session_key at most {max_id}", max_id=MAX_ID
        )
    async with transaction(pool) as conn:
        app = await login_application(conn, link.client_id, link.appid)
        if app is None or not app["has_appid"]:
            raise Unauthorized("the application does not support wechat mini program")
        org_id = app["organization_id"]
        await lock_keys(conn, [_lock_key("wechat-openid", str(org_id), link.appid, link.openid)])
        user = await user_by_id(conn, link.user_id, lock=True)
        if user is None or user["organization_id"] != org_id or user["is_deleted"]:
            raise InvalidToken("the access token's user is gone; log in again")
        if user["is_forbidden"]:
            raise Forbidden("the user is forbidden to sign in")
        identity = Identity(organization_id=org_id, appid=link.appid, openid=link.openid, unionid=link.unionid)
        clear, sealed = session_key_columns(master, identity_row(org_id, link.appid, link.openid), link.session_key)
        owner = await user_by_openid(conn, org_id, link.appid, link.openid)
        if owner is not None and owner["user_id"] != user["id"]:
            raise Conflict(IDENTITY_TAKEN)
        if owner is not None:
            await refresh_identity(conn, identity, session_key=clear, session_key_sealed=sealed)
        else:
            await insert_identity(conn, identity, user_id=user["id"], session_key=clear, session_key_sealed=sealed)
    linked = owner is None
    structlog.contextvars.bind_contextvars(user_id=str(user["id"]), wechat_linked=linked)
    if audit is not None:
        audit.record(
            "link_wechat",
            actor_kind="user",
            actor_id=str(user["id"]),
            target_user_id=str(user["id"]),
            organization=app["organization"],
            application=app["name"],
            client_id=app["client_id"],
            details={"appid": link.appid, "linked": linked},
        )
    return LinkResult(appid=link.appid, linked=linked)


async def unlink_wechat(pool: Pool, signer: Signer, req: UnlinkWechat, audit: AuditWriter | None = None) -> LinkResult:
    if len(req.appid) > MAX_ID:
        raise BadRequest("appid must be at most {max_id} characters", max_id=MAX_ID)
    async with transaction(pool) as conn:
        caller = await authenticate(conn, signer, req.credentials)
        user_id = require_user(caller, "unlink-wechat")
        appid = req.appid
        if not appid:
            provider = await miniprogram_provider(conn, caller.client_id)
            appid = provider["appid"] if provider is not None and provider["appid"] else ""
        if not appid:
            raise BadRequest("appid is missing and the caller's application has no WeChat mini program")
        await user_by_id(conn, user_id, lock=True)  # one change of a user's sign-in methods at a time
        methods = await sign_in_methods(conn, user_id)
        if methods is None:
            raise InvalidToken("the access token's user is gone; log in again")
        appids = list(methods["appids"])
        if appid not in appids:
            raise NotFound("no WeChat identity of this AppID is linked to the account")
        others = [a for a in appids if a != appid]
        if not others and not methods["has_phone"] and not methods["has_password"]:
            raise BadRequest(LAST_METHOD)
        await delete_identities(conn, user_id, appid)
    if audit is not None:
        audit.record(
            "unlink_wechat",
            actor_kind="user",
            actor_id=user_id,
            target_user_id=user_id,
            organization=caller.organization,
            client_id=caller.client_id,
            details={"appid": appid},
        )
    return LinkResult(appid=appid, linked=False)
