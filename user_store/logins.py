"""The WeChat mini-program login: jscode2session results in, their users and token rows out, for a batch of up to
``MAX_BATCH`` logins in one transaction of a constant number of statements (``queries.logins``); a lone login is a
batch of one.

Each login keeps its own outcome, as if it had been alone. What needs no database (``validate_login``) is refused
before the transaction; what the rows refuse (an unknown client, sign-up disabled, a forbidden user) leaves that
login out of the writes. Within a batch the logins take effect in their order: two logins of one new openid make one
user (the second is a returning login), and a unionid seen first in the batch links the logins after it. Should a
statement fail for all (a bug, or a row no lock covers), each login is retried alone so that the failure stays its
own; an unreachable database is every login's 503.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec
import structlog

from shared.errors import BadRequest, InvalidGrant, MinidoorError, Unauthorized, Unavailable
from shared.messages import LoginResult, WechatLogin
from user_store.audit import AuditWriter
from user_store.db import Conn, Pool, transaction
from user_store.master_key import MasterKey
from user_store.queries.logins import (
    IdentityRow,
    NewUser,
    find_users,
    insert_identities,
    insert_users,
    lock_keys,
    login_applications,
    refresh_identities,
    update_profiles,
)
from user_store.queries.tokens import TokenRow, insert_tokens
from user_store.queries.tokens import subject as token_subject
from user_store.session_keys import family_row, identity_row, session_key_columns
from user_store.signing_keys.signer import MintedTokens, Signer
from user_store.tokens import mint_row
from user_store.user_rules import MAX_DISPLAY_NAME, USERNAME_RE, UserRules, normalize

MAX_ID = 128
#: Logins per transaction; the view splits a larger batch.
MAX_BATCH = 64
#: How many random suffixes to try when both the username and ``wechat-<openid>`` are taken.
_SUFFIX_TRIES = 5
#: What PostgreSQL answers for a NUL byte in text (``queries.translate`` names it): refused here before the
#: transaction, as a lone login's statement would have refused it, so that it cannot fail the rest of a batch.
_NUL_KIND = "CharacterNotInRepertoireError"

log = structlog.get_logger()
Outcome = LoginResult | Exception
_T = TypeVar("_T")


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
    # Named by the table whose statement met the byte first when each login had its own transaction.
    for what, values in (
        ("application", (login.client_id, login.appid)),
        ("user", (login.openid, login.unionid)),
        ("wechat identity", (login.session_key,)),
    ):
        if any("\x00" in value for value in values):
            raise BadRequest("invalid {what}: {kind}", what=what, kind=_NUL_KIND)
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
    """Find or create the user behind a WeChat identity and mint their tokens: a batch of one, in the caller's log
    context."""
    [outcome] = await login_wechat_batch(pool, signer, [login], rules, audit, master)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def login_wechat_batch(
    pool: Pool,
    signer: Signer,
    logins: Sequence[WechatLogin],
    rules: UserRules,
    audit: AuditWriter | None = None,
    master: MasterKey | None = None,
    contexts: Sequence[contextvars.Context] | None = None,
) -> list[Outcome]:
    """Each login's ``LoginResult``, or the error it gets, in order: users found or created and tokens minted in one
    transaction. Session keys are sealed under ``master`` when there is one; each login's audit event is queued after
    the commit (``audit``), not written in it.

    What concerns one login (the log context it binds, its audit event's request id and client IP) happens in
    ``contexts[i]``, its own; without ``contexts`` (a lone login), in the caller's.
    """
    if len(logins) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} logins per batch, not {len(logins)}")

    def run(i: int, fn: Callable[..., _T], *args: Any) -> _T:
        return fn(*args) if contexts is None else contexts[i].run(fn, *args)

    outcomes: list[Outcome | None] = [None] * len(logins)
    valid: dict[int, WechatLogin] = {}
    for i, login in enumerate(logins):
        try:
            valid[i] = run(i, validate_login, login, rules)
        except Exception as exc:
            outcomes[i] = exc
    for i, settled in (await _settle(pool, signer, master, valid)).items():
        outcomes[i] = settled if isinstance(settled, Exception) else run(i, _finish, settled, audit)
    answered = [outcome for outcome in outcomes if outcome is not None]
    assert len(answered) == len(logins), "every login has an outcome"
    return answered


@dataclass(frozen=True, slots=True)
class _Done:
    """A login committed: its answer, and the application its audit event names."""

    result: LoginResult
    app: asyncpg.Record


def _finish(done: _Done, audit: AuditWriter | None) -> LoginResult:
    """After the commit, in the login's own log context."""
    result, app = done.result, done.app
    # Carried by the request's canonical log line rather than a line of its own.
    structlog.contextvars.bind_contextvars(user_id=result.user_id, created=result.created)
    if audit is not None:
        audit.record(
            "login",
            actor_kind="user",
            actor_id=result.user_id,
            target_user_id=result.user_id,
            organization=app["organization"],
            application=app["name"],
            client_id=app["client_id"],
            details={"method": "wechat_miniprogram", "user": "new" if result.created else "returning"},
        )
    return result


async def _settle(
    pool: Pool, signer: Signer, master: MasterKey | None, logins: dict[int, WechatLogin]
) -> dict[int, _Done | Exception]:
    """``logins`` in one transaction; each alone if that transaction fails for a reason that may be one login's."""
    if not logins:
        return {}
    try:
        async with transaction(pool) as conn:
            return await _login_all(conn, signer, master, logins)
    except Unavailable as exc:
        return dict.fromkeys(logins, exc)
    except Exception as exc:
        if len(logins) == 1:
            return dict.fromkeys(logins, exc)
        log.warning("login_batch_split", logins=len(logins), error=type(exc).__name__)
        alone = await asyncio.gather(*(_settle(pool, signer, master, {i: login}) for i, login in logins.items()))
        return {i: outcome for part in alone for i, outcome in part.items()}


IdentityKey = tuple[Any, str, str]
UnionKey = tuple[Any, str]


@dataclass(slots=True)
class _Identity:
    """A WeChat identity as the batch leaves it."""

    user_id: Any
    unionid: str
    #: Its place among the identities sharing its unionid: the oldest one's user is the unionid's.
    age: tuple[int, float]
    new: bool
    session_key: str = ""
    used: bool = False


@dataclass(slots=True)
class _Step:
    """What one login does: whose tokens it gets, whether it creates that user, which profile fields it sets."""

    index: int
    login: WechatLogin
    app: asyncpg.Record
    user_id: Any
    created: bool


@dataclass(slots=True)
class _Plan:
    """The logins of a batch played in order against what the lookups found, before anything is written."""

    identities: dict[IdentityKey, _Identity]
    #: The user of each unionid (that of its oldest identity), and that identity's age.
    unionids: dict[UnionKey, tuple[tuple[int, float], Any]]
    users: dict[Any, asyncpg.Record]
    steps: list[_Step] = field(default_factory=list)
    new_users: dict[uuid.UUID, _Step] = field(default_factory=dict)
    refused: dict[int, Exception] = field(default_factory=dict)

    def add(self, index: int, login: WechatLogin, app: asyncpg.Record) -> None:
        org_id = app["organization_id"]
        key = (org_id, login.appid, login.openid)
        union = (org_id, login.unionid)
        created = False
        if (identity := self.identities.get(key)) is not None:
            user_id = identity.user_id
        elif login.unionid and union in self.unionids:
            user_id = self.unionids[union][1]
        elif not app["enable_sign_up"]:
            self.refused[index] = InvalidGrant("the application does not allow to sign up new account")
            return
        else:
            user_id, created = uuid.uuid4(), True
        user = self.users.get(user_id)
        if user is not None and (user["is_forbidden"] or user["is_deleted"]):
            self.refused[index] = InvalidGrant("the user is forbidden to sign in")
            return
        if identity is None:
            identity = self.identities[key] = _Identity(user_id, "", (1, len(self.steps)), new=True)
        if login.unionid and not identity.unionid:  # the identity's first unionid is kept, as the UPDATE does
            identity.unionid = login.unionid
            owner = self.unionids.get(union)
            if owner is None or identity.age < owner[0]:
                self.unionids[union] = (identity.age, user_id)
        identity.session_key, identity.used = login.session_key, True
        step = _Step(index, login, app, user_id, created)
        self.steps.append(step)
        if created:
            self.new_users[user_id] = step


async def _login_all(
    conn: Conn, signer: Signer, master: MasterKey | None, logins: dict[int, WechatLogin]
) -> dict[int, _Done | Exception]:
    outcomes: dict[int, _Done | Exception] = {}
    apps = await login_applications(
        conn, list(dict.fromkeys((login.client_id, login.appid) for login in logins.values()))
    )
    accepted: dict[int, tuple[WechatLogin, asyncpg.Record]] = {}
    for i, login in logins.items():
        try:
            accepted[i] = (login, _application(apps.get((login.client_id, login.appid)), signer))
        except MinidoorError as exc:
            outcomes[i] = exc
    if not accepted:
        return outcomes

    openids = list(
        dict.fromkeys((app["organization_id"], login.appid, login.openid) for login, app in accepted.values())
    )
    unionids = list(
        dict.fromkeys((app["organization_id"], login.unionid) for login, app in accepted.values() if login.unionid)
    )
    # Concurrent first logins of one person queue here, so exactly one of them creates the user.
    keys = [_lock_key("wechat-openid", str(org_id), appid, openid) for org_id, appid, openid in openids]
    keys += [_lock_key("wechat-unionid", str(org_id), unionid) for org_id, unionid in unionids]
    await lock_keys(conn, sorted(set(keys)))
    by_openid, by_unionid = await find_users(conn, openids, unionids)

    plan = _Plan(
        identities={
            key: _Identity(row["user_id"], row["unionid"] or "", _age(row), new=False) for key, row in by_openid.items()
        },
        unionids={key: (_age(row), row["user_id"]) for key, row in by_unionid.items()},
        users={row["user_id"]: row for row in (*by_openid.values(), *by_unionid.values())},
    )
    for i, (login, app) in accepted.items():
        plan.add(i, login, app)
    outcomes.update(plan.refused)
    if not plan.steps:
        return outcomes

    plan.users.update(await _create_users(conn, plan.new_users))
    await _write_identities(conn, plan.identities, master)
    if profiles := _profiles(plan.steps):
        await update_profiles(conn, profiles)
    minted = _mint(signer, master, plan)
    await insert_tokens(conn, [row for _, _, row in minted])
    for step, tokens, _ in minted:
        result = LoginResult(
            user_id=str(step.user_id),
            user_name=plan.users[step.user_id]["user_name"],
            created=step.created,
            token=tokens.response,
        )
        outcomes[step.index] = _Done(result, step.app)
    return outcomes


def _application(app: asyncpg.Record | None, signer: Signer) -> asyncpg.Record:
    """The login's application if it may sign in users with its appid and its tokens can be signed now."""
    if app is None:
        raise Unauthorized("client_id is invalid")
    if not app["has_appid"]:
        raise Unauthorized("the application does not support wechat mini program")
    signer.signing_key(app["signing_alg"])
    return app


def _age(row: asyncpg.Record) -> tuple[int, float]:
    """Identities already stored come before any the batch adds, oldest first."""
    return 0, row["identity_created_at"].timestamp()


async def _create_users(conn: Conn, new_users: Mapping[uuid.UUID, _Step]) -> dict[Any, asyncpg.Record]:
    """Insert the batch's new users; each name is the username if valid and free, else ``wechat-<openid>``, else that
    with a random suffix: one statement per round of names, a second only for the names that were taken."""
    candidates = {user_id: _names(step.login) for user_id, step in new_users.items()}
    created: dict[Any, asyncpg.Record] = {}
    for attempt in range(max((len(names) for names in candidates.values()), default=0)):
        todo = [user_id for user_id in new_users if user_id not in created and attempt < len(candidates[user_id])]
        if not todo:
            break
        rows = []
        for user_id in todo:
            step = new_users[user_id]
            login, app = step.login, step.app
            rows.append(
                NewUser(
                    id=user_id,
                    organization_id=app["organization_id"],
                    name=candidates[user_id][attempt],
                    display_name=login.username,
                    avatar=login.avatar,
                    signup_application=app["name"],
                    openid=login.openid,
                    unionid=login.unionid,
                )
            )
        created.update(await insert_users(conn, rows))
    for user_id, step in new_users.items():
        if user_id not in created:
            raise RuntimeError(f"no free user name for openid {step.login.openid!r}")
    return created


def _names(login: WechatLogin) -> list[str]:
    fallback = f"wechat-{login.openid}"
    names = [login.username] if USERNAME_RE.match(login.username) else []
    names.append(fallback)
    names.extend(f"{fallback}-{secrets.token_hex(3)}" for _ in range(_SUFFIX_TRIES))
    return names


async def _write_identities(conn: Conn, identities: Mapping[IdentityKey, _Identity], master: MasterKey | None) -> None:
    """Each identity the batch used, with its last login's session_key: the new ones inserted, the others updated."""
    new: list[IdentityRow] = []
    seen: list[IdentityRow] = []
    for (org_id, appid, openid), identity in identities.items():
        if not identity.used:
            continue
        clear, sealed = session_key_columns(master, identity_row(org_id, appid, openid), identity.session_key)
        row = IdentityRow(org_id, identity.user_id, appid, openid, identity.unionid, clear, sealed)
        (new if identity.new else seen).append(row)
    if new:
        await insert_identities(conn, new)
    if seen:
        await refresh_identities(conn, seen)


def _profiles(steps: Sequence[_Step]) -> list[tuple[Any, str, str]]:
    """``(user_id, display_name, avatar)`` per user whose profile a login sets: the last non-empty value of each.

    Casdoor documents "update the profile on login" but ignores both fields for existing users; we honour it. A
    login that creates its user writes them with the INSERT instead.
    """
    profiles: dict[Any, tuple[str, str]] = {}
    for step in steps:
        login = step.login
        if step.created or not (login.username or login.avatar):
            continue
        name, avatar = profiles.get(step.user_id, ("", ""))
        profiles[step.user_id] = (login.username or name, login.avatar or avatar)
    return [(user_id, name, avatar) for user_id, (name, avatar) in profiles.items()]


def _mint(signer: Signer, master: MasterKey | None, plan: _Plan) -> list[tuple[_Step, MintedTokens, TokenRow]]:
    """A token pair per login, in a new family each; its profile claims as the user's row stood after that login."""
    profiles: dict[Any, dict[str, Any]] = {}
    minted = []
    for step in plan.steps:
        login = step.login
        profile = profiles.setdefault(step.user_id, dict(plan.users[step.user_id].items()))
        if not step.created:
            profile["display_name"] = login.username or profile["display_name"]
            profile["avatar"] = login.avatar or profile["avatar"]
        family_id = uuid.uuid4()
        session_key, sealed = session_key_columns(master, family_row(family_id), login.session_key)
        tokens, row = mint_row(
            signer,
            token_subject(profile, step.app),
            application_id=step.app["id"],
            user_id=step.user_id,
            family_id=family_id,
            session_key=session_key,
            session_key_sealed=sealed,
        )
        minted.append((step, tokens, row))
    return minted
