"""Phone sign-in: a phone number WeChat vouched for in, the organization's user with it (found, created, or refused)
and one token row out, atomically; with the caller's WeChat identity (from the job's ``login_code``) linked to it.

The phone number is personal data: it is never logged nor audited (the audit row says "phone", not which).
"""

from __future__ import annotations

import re
import secrets
import uuid

import asyncpg
import structlog

from shared.errors import BadRequest, Conflict, InvalidGrant, Unauthorized
from shared.messages import LoginResult, PhoneLogin
from user_store.audit import AuditWriter
from user_store.db import Conn, Pool, transaction
from user_store.logins import MAX_ID, _lock_key
from user_store.master_key import MasterKey
from user_store.queries.applications import login_application
from user_store.queries.tokens import subject as token_subject
from user_store.queries.users import (
    Identity,
    insert_identity,
    insert_user,
    lock_keys,
    refresh_identity,
    set_user_phone,
    user_by_openid,
    user_by_phone,
)
from user_store.session_keys import family_row, identity_row, session_key_columns
from user_store.signing_keys.signer import Signer
from user_store.tokens import issue_tokens

_DIGITS = re.compile(r"^[0-9]{4,20}$")
_COUNTRY = re.compile(r"^[0-9]{1,4}$")
NO_ACCOUNT = "no account for this phone number"
#: Names no one: the caller learns only that the identity is taken.
IDENTITY_TAKEN = "this WeChat account is already linked to another user"


async def login_phone(
    pool: Pool,
    signer: Signer,
    login: PhoneLogin,
    audit: AuditWriter | None = None,
    master: MasterKey | None = None,
) -> LoginResult:
    if not _DIGITS.match(login.phone) or not _COUNTRY.match(login.country_code):
        raise BadRequest("phone must be 4 to 20 digits and country_code 1 to 4 digits")
    if len(login.openid) > MAX_ID or len(login.unionid) > MAX_ID or len(login.session_key) > MAX_ID:
        raise BadRequest("openid, unionid and session_key must be at most {max_id} characters", max_id=MAX_ID)
    async with transaction(pool) as conn:
        app = await login_application(conn, login.client_id, login.appid)
        if app is None:
            raise Unauthorized("client_id is invalid")
        if not app["has_appid"]:
            raise Unauthorized("the application does not support wechat mini program")
        org_id = app["organization_id"]
        keys = [_lock_key("phone", str(org_id), login.phone)]
        if login.openid:
            keys.append(_lock_key("wechat-openid", str(org_id), login.appid, login.openid))
        await lock_keys(conn, sorted(keys))

        user, created = await _find_or_create(conn, app, login)
        if user["is_forbidden"] or user["is_deleted"]:
            raise InvalidGrant("the user is forbidden to sign in")
        linked = False
        if login.openid:
            linked = await _link(conn, org_id, user["user_id"], login, master)

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
    structlog.contextvars.bind_contextvars(user_id=subject.user_id, created=created, wechat_linked=linked)
    if audit is not None:
        details: dict[str, str | int | float | bool | list[str]] = {
            "method": "wechat_miniprogram_phone",
            "user": "new" if created else "returning",
        }
        if linked:
            details["wechat_linked"] = True
        audit.record(
            "login",
            actor_kind="user",
            actor_id=subject.user_id,
            target_user_id=subject.user_id,
            organization=app["organization"],
            application=app["name"],
            client_id=app["client_id"],
            details=details,
        )
    return LoginResult(user_id=subject.user_id, user_name=subject.user_name, created=created, token=minted.response)


async def _find_or_create(conn: Conn, app: asyncpg.Record, login: PhoneLogin) -> tuple[asyncpg.Record, bool]:
    user = await user_by_phone(conn, app["organization_id"], login.phone)
    if user is not None:
        if user["country_code"] and user["country_code"] != login.country_code:
            raise InvalidGrant(NO_ACCOUNT)  # the same digits under another country code: another person's number
        if not user["country_code"]:
            await set_user_phone(conn, user["user_id"], login.phone, login.country_code)
        return user, False
    if app["preprovisioned_only"]:
        raise InvalidGrant(NO_ACCOUNT)
    if not app["enable_sign_up"]:
        raise InvalidGrant("the application does not allow to sign up new account")
    for _ in range(5):
        # Not the phone number: a user's name shows in tokens and logs.
        user = await insert_user(
            conn,
            organization_id=app["organization_id"],
            name=f"phone-{secrets.token_hex(6)}",
            display_name="",
            avatar="",
            signup_application=app["name"],
            properties={},
        )
        if user is not None:
            await set_user_phone(conn, user["user_id"], login.phone, login.country_code)
            return user, True
    raise RuntimeError("no free user name for a phone sign-in")


async def _link(conn: Conn, org_id: uuid.UUID, user_id: uuid.UUID, login: PhoneLogin, master: MasterKey | None) -> bool:
    """Link the WeChat identity to ``user_id`` (True if new); 409 when another user has it."""
    identity = Identity(organization_id=org_id, appid=login.appid, openid=login.openid, unionid=login.unionid)
    clear, sealed = session_key_columns(master, identity_row(org_id, login.appid, login.openid), login.session_key)
    owner = await user_by_openid(conn, org_id, login.appid, login.openid)
    if owner is not None and owner["user_id"] != user_id:
        raise Conflict(IDENTITY_TAKEN)
    if owner is not None:
        await refresh_identity(conn, identity, session_key=clear, session_key_sealed=sealed)
        return False
    await insert_identity(conn, identity, user_id=user_id, session_key=clear, session_key_sealed=sealed)
    return True
