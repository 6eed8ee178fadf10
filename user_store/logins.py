"""The WeChat mini-program login: one jscode2session result in, one user and one token row out, atomically."""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg
import msgspec
import structlog

from shared.errors import BadRequest, InvalidGrant, Unauthorized
from shared.messages import LoginResult, WechatLogin
from user_store.audit import AuditWriter
from user_store.db import Conn, Pool, transaction
from user_store.master_key import MasterKey
from user_store.queries.applications import login_application
from user_store.queries.tokens import subject as token_subject
from user_store.queries.users import (
    Identity,
    insert_identity,
    insert_user,
    lock_keys,
    refresh_identity,
    update_user_profile,
    user_by_openid,
    user_by_unionid,
)
from user_store.session_keys import family_row, identity_row, session_key_columns
from user_store.signing_keys.signer import Signer
from user_store.tokens import issue_tokens
from user_store.user_rules import MAX_DISPLAY_NAME, USERNAME_RE, UserRules, normalize

MAX_ID = 128
#: How many random suffixes to try when both the username and ``wechat-<openid>`` are taken.
_SUFFIX_TRIES = 5


def validate_login(login: WechatLogin, rules: UserRules) -> WechatLogin:
    """Reject what must never reach the database, before any lookup; the login with its profile fields normalized.

    A malformed ``username`` or ``avatar`` is a client bug: 400. A reserved name (or a look-alike) is a real
    WeChat nickname, so it is not refused: it is not used, neither as the user name nor as the display name.
    """
    if not login.openid or len(login.openid) > MAX_ID:
        raise BadRequest("openid must be 1 to {max_id} characters", max_id=MAX_ID)
    if not login.appid or len(login.appid) > MAX_ID:
        raise BadRequest("appid must be 1 to {max_id} characters", max_id=MAX_ID)
    if len(login.unionid) > MAX_ID:
        raise BadRequest("unionid must be at most {max_id} characters", max_id=MAX_ID)
    if len(login.session_key) > MAX_ID:
        raise BadRequest("session_key must be at most {max_id} characters", max_id=MAX_ID)
    username = normalize(login.username)
    if len(username) > MAX_DISPLAY_NAME:
        raise BadRequest("username must be at most {max_display_name} characters", max_display_name=MAX_DISPLAY_NAME)
    if not all(ch.isprintable() for ch in username):
        raise BadRequest("username must be printable text")
    if rules.is_reserved(username):
        structlog.contextvars.bind_contextvars(reserved_username_dropped=True)
        username = ""
    rules.avatar("avatar", login.avatar)
    return login if username == login.username else msgspec.structs.replace(login, username=username)


def _lock_key(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def login_wechat(
    pool: Pool,
    signer: Signer,
    login: WechatLogin,
    rules: UserRules,
    audit: AuditWriter | None = None,
    master: MasterKey | None = None,
) -> LoginResult:
    """Find or create the user behind a WeChat identity and mint their tokens, all in one transaction; the
    session_key is sealed under ``master`` when there is one, and the audit event is queued after the commit
    (``audit``), not written in it."""
    login = validate_login(login, rules)
    async with transaction(pool) as conn:
        app = await login_application(conn, login.client_id, login.appid)
        if app is None:
            raise Unauthorized("client_id is invalid")
        if not app["has_appid"]:
            raise Unauthorized("the application does not support wechat mini program")
        org_id = app["organization_id"]
        # Concurrent first logins of one person queue here, so exactly one of them creates the user.
        keys = [_lock_key("wechat-openid", str(org_id), login.appid, login.openid)]
        if login.unionid:
            keys.append(_lock_key("wechat-unionid", str(org_id), login.unionid))
        await lock_keys(conn, sorted(keys))

        user, created = await _find_or_create_user(conn, app, login, master)
        if user["is_forbidden"] or user["is_deleted"]:
            raise InvalidGrant("the user is forbidden to sign in")

        subject = token_subject(user, app)
        family_id = uuid.uuid4()
        session_key, sealed = session_key_columns(master, family_row(family_id), login.session_key)
        minted = await issue_tokens(
            conn,
            signer,
            subject,
            application_id=app["id"],
            user_id=user["user_id"],
            family_id=family_id,
            session_key=session_key,
            session_key_sealed=sealed,
        )
    # Carried by the request's canonical log line rather than a line of its own.
    structlog.contextvars.bind_contextvars(user_id=subject.user_id, created=created)
    if audit is not None:
        audit.record(
            "login",
            actor_kind="user",
            actor_id=subject.user_id,
            target_user_id=subject.user_id,
            organization=app["organization"],
            application=app["name"],
            client_id=app["client_id"],
            details={"method": "wechat_miniprogram", "user": "new" if created else "returning"},
        )
    return LoginResult(user_id=subject.user_id, user_name=subject.user_name, created=created, token=minted.response)


async def _find_or_create_user(
    conn: Conn, app: asyncpg.Record, login: WechatLogin, master: MasterKey | None
) -> tuple[asyncpg.Record, bool]:
    org_id = app["organization_id"]
    identity = Identity(organization_id=org_id, appid=login.appid, openid=login.openid, unionid=login.unionid)
    clear, sealed = session_key_columns(master, identity_row(org_id, login.appid, login.openid), login.session_key)
    user = await user_by_openid(conn, org_id, login.appid, login.openid)
    if user is not None:
        await refresh_identity(conn, identity, session_key=clear, session_key_sealed=sealed)
    elif login.unionid and (user := await user_by_unionid(conn, org_id, login.unionid)) is not None:
        await insert_identity(conn, identity, user_id=user["user_id"], session_key=clear, session_key_sealed=sealed)
    else:
        if not app["enable_sign_up"]:
            raise InvalidGrant("the application does not allow to sign up new account")
        user = await _create_user(conn, app, login)
        await insert_identity(conn, identity, user_id=user["user_id"], session_key=clear, session_key_sealed=sealed)
        return user, True
    # Casdoor documents "update the profile on login" but ignores both fields for existing users; we honour it.
    if login.username or login.avatar:
        user = await update_user_profile(conn, user["user_id"], login.username, login.avatar)
    return user, False


async def _create_user(conn: Conn, app: asyncpg.Record, login: WechatLogin) -> asyncpg.Record:
    fallback = f"wechat-{login.openid}"
    candidates = [login.username] if USERNAME_RE.match(login.username) else []
    candidates.append(fallback)
    candidates.extend(f"{fallback}-{secrets.token_hex(3)}" for _ in range(_SUFFIX_TRIES))
    for name in candidates:
        user = await insert_user(
            conn,
            organization_id=app["organization_id"],
            name=name,
            display_name=login.username,
            avatar=login.avatar,
            signup_application=app["name"],
            properties={"wechatOpenId": login.openid, "wechatUnionId": login.unionid},
        )
        if user is not None:
            return user
    raise RuntimeError(f"no free user name for openid {login.openid!r}")
