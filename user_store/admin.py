"""Administration for the CLI and the demo seed: organizations, applications, mini-program providers.

Each function takes a connection and runs in its own transaction (a savepoint when the caller already has one).
What they return encodes to JSON with Casdoor's camelCase names; a client secret appears once, at creation.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

import asyncpg
import msgspec

from shared.errors import BadRequest, Conflict, NotFound
from shared.jwtcheck import SIGNING_ALGORITHMS, SigningAlg
from user_store.content_safety import push_token
from user_store.db import Conn
from user_store.master_key import MasterKey
from user_store.provider_secrets import check_master_key, open_secret, secret_columns
from user_store.queries.applications import (
    application_by_name,
    insert_application,
    insert_organization,
    insert_provider,
    link_provider,
    listing,
    lock_application,
    lock_provider,
    miniprogram_provider,
    organization_by_name,
    set_client_secret_hash,
    set_provider_secret,
)
from user_store.queries.applications import set_content_safety as set_application_content_safety
from user_store.queries.applications import (
    set_preprovisioned_only as set_application_preprovisioned_only,
)
from user_store.queries.applications import (
    set_signing_alg as set_application_signing_alg,
)
from user_store.queries.users import insert_phone_user
from user_store.signing_keys import keyring

MASK = "***"


class Organization(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    display_name: str
    default_avatar: str
    created_time: datetime


class Application(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    organization: str
    client_id: str
    enable_sign_up: bool
    expire_in_hours: float
    refresh_expire_in_hours: float
    #: RS256 or ES256: which key signs the application's tokens (``signing_alg``; Casdoor's name for it).
    signing_alg: SigningAlg = msgspec.field(name="tokenSigningMethod")
    #: Phone sign-in only for users an admin created beforehand (``create_user``), whatever ``enable_sign_up`` says.
    preprovisioned_only: bool = False
    #: Display names and avatars are screened by WeChat's content security (``set_content_safety``).
    content_safety: bool = False
    #: Provider names, in the order the login looks at them.
    providers: list[str]
    created_time: datetime


class NewApplication(Application, frozen=True, kw_only=True, rename="camel"):
    #: Shown this once; only its sha256 is stored.
    client_secret: str


class Provider(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    type: str
    #: The mini program's AppID, named as Casdoor names it.
    client_id: str
    client_secret: str
    created_time: datetime


class NewUser(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A user created ahead of their first phone sign-in (the phone number is not echoed)."""

    owner: str
    name: str
    id: str


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    organizations: list[Organization]
    applications: list[Application]
    providers: list[Provider]


def _secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 100 or not name.isprintable() or name != name.strip():
        raise BadRequest("invalid {kind} name {name!r}", kind=kind, name=name)


async def create_organization(conn: Conn, name: str, display_name: str = "") -> Organization:
    """A new organization; ``Conflict`` when the name is taken."""
    _check_name("organization", name)
    return _organization(await insert_organization(conn, name, display_name))


def _organization(row: asyncpg.Record) -> Organization:
    return Organization(
        name=row["name"],
        display_name=row["display_name"],
        default_avatar=row["default_avatar"],
        created_time=row["created_at"],
    )


def check_signing_alg(alg: str) -> SigningAlg:
    """``alg`` if minidoor signs with it; ``BadRequest`` naming the choices otherwise."""
    if alg not in SIGNING_ALGORITHMS:
        raise BadRequest(
            "the signing algorithm must be {choices}, not {alg!r}", choices=" or ".join(SIGNING_ALGORITHMS), alg=alg
        )
    return alg


async def create_application(
    conn: Conn,
    organization: str,
    name: str,
    enable_sign_up: bool = True,
    expire_in_hours: float = 168.0,
    *,
    signing_alg: str = "RS256",
    master: MasterKey | None = None,
) -> NewApplication:
    """A new application in ``organization`` with a fresh client id and secret (the secret is returned once),
    signing its tokens with ``signing_alg``. The first application of an algorithm other than RS256 (whose keys the
    user store makes at its first start) makes that algorithm's first key, sealed with ``master``."""
    _check_name("application", name)
    alg = check_signing_alg(signing_alg)
    if not expire_in_hours > 0:
        raise BadRequest("expire_in_hours must be positive")
    client_id, client_secret = secrets.token_hex(10), secrets.token_hex(20)
    async with conn.transaction():
        added = await insert_application(
            conn,
            name=name,
            organization=organization,
            client_id=client_id,
            client_secret_hash=_secret_hash(client_secret),
            enable_sign_up=enable_sign_up,
            expire_in_hours=expire_in_hours,
            signing_alg=alg,
        )
        if not added:
            raise NotFound("organization {organization!r} does not exist", organization=organization)
        await _ensure_signing_key(conn, alg, master)
        app = await get_application(conn, name)
    return NewApplication(**msgspec.structs.asdict(app), client_secret=client_secret)


async def set_signing_alg(
    conn: Conn, application: str, signing_alg: str, *, master: MasterKey | None = None
) -> Application:
    """Sign ``application``'s new tokens with ``signing_alg`` (making its first key, as ``create_application``
    does). Tokens already issued stay valid: their keys stay in the JWKS until they expire."""
    alg = check_signing_alg(signing_alg)
    async with conn.transaction():
        if not await set_application_signing_alg(conn, application, alg):
            raise NotFound("application {application!r} does not exist", application=application)
        await _ensure_signing_key(conn, alg, master)
        app = await get_application(conn, application)
    return app


async def _ensure_signing_key(conn: Conn, alg: SigningAlg, master: MasterKey | None) -> None:
    if alg != "RS256":
        await keyring.ensure_key(conn, master, alg)


async def get_application(conn: Conn, name: str) -> Application:
    """The application called ``name`` (no secret); ``NotFound`` when there is none."""
    row = await application_by_name(conn, name)
    if row is None:
        raise NotFound("application {name!r} does not exist", name=name)
    return _application(row)


def _application(row: asyncpg.Record) -> Application:
    return Application(
        name=row["name"],
        organization=row["organization"],
        client_id=row["client_id"],
        enable_sign_up=row["enable_sign_up"],
        expire_in_hours=row["expire_in_hours"],
        refresh_expire_in_hours=row["refresh_expire_in_hours"],
        signing_alg=row["signing_alg"],
        preprovisioned_only=row["preprovisioned_only"],
        content_safety=row["content_safety"],
        providers=list(row["providers"]),
        created_time=row["created_at"],
    )


async def rotate_client_secret(conn: Conn, application: str) -> str:
    """Replace the application's client secret; return the new one (shown once)."""
    secret = secrets.token_hex(20)
    if not await set_client_secret_hash(conn, application, _secret_hash(secret)):
        raise NotFound("application {application!r} does not exist", application=application)
    return secret


async def attach_miniprogram_provider(
    conn: Conn, application: str, appid: str, secret: str, name: str | None = None, *, master: MasterKey | None = None
) -> Provider:
    """Link a WeChat mini-program provider (``wechat-mp-<appid>`` unless named) after the application's others.

    Idempotent: the provider is created when absent (its secret replaced when present), linked when unlinked. The
    secret is sealed with ``master``, or stored in clear without one; a master key missing or unlike the one that
    sealed what the database holds is refused (``check_master_key``).
    """
    if not appid or not secret:
        raise BadRequest("a mini-program provider needs an appid and a secret")
    name = name or f"wechat-mp-{appid}"
    _check_name("provider", name)
    async with conn.transaction():
        await check_master_key(conn, master)
        app_id = await lock_application(conn, application)
        if app_id is None:
            raise NotFound("application {application!r} does not exist", application=application)
        # The id is chosen here because the sealed secret is bound to it; a row already named so keeps its own.
        provider_id = uuid.uuid4()
        row = await insert_provider(conn, provider_id, name, appid, *secret_columns(master, provider_id, secret))
        if row is None:
            existing = await lock_provider(conn, name, appid)
            if existing is None:
                raise Conflict("provider {name!r} already exists with another type or appid", name=name)
            row = await set_provider_secret(conn, existing, name, *secret_columns(master, existing, secret))
        await link_provider(conn, app_id, row["id"])
    return _provider(row)


def _provider(row: asyncpg.Record) -> Provider:
    return Provider(
        name=row["name"],
        type=row["type"],
        client_id=row["appid"],
        client_secret=MASK,
        created_time=row["created_at"],
    )


async def list_all(conn: Conn) -> Listing:
    """Every organization, application (without secrets) and provider (secret masked)."""
    orgs, apps, providers = await listing(conn)
    return Listing(
        organizations=[_organization(r) for r in orgs],
        applications=[_application(r) for r in apps],
        providers=[_provider(r) for r in providers],
    )


async def create_user(conn: Conn, organization: str, name: str, phone: str, country_code: str = "86") -> NewUser:
    """A user of ``organization`` who signs in with ``phone`` (digits; ``country_code`` digits, default 86), for an
    application set to pre-provisioned users only; ``Conflict`` when the name or the phone is taken."""
    _check_name("user", name)
    phone = phone.removeprefix("+" + country_code) if phone.startswith("+") else phone
    if not phone.isdigit() or not 4 <= len(phone) <= 20 or not country_code.isdigit() or len(country_code) > 4:
        raise BadRequest("the phone must be 4 to 20 digits and the country code 1 to 4 digits")
    org = await organization_by_name(conn, organization)
    if org is None:
        raise NotFound("organization {organization!r} does not exist", organization=organization)
    user_id = await insert_phone_user(conn, org["id"], name, phone, country_code)
    return NewUser(owner=organization, name=name, id=str(user_id))


class MessagePush(msgspec.Struct, frozen=True, kw_only=True):
    """What to enter in WeChat's console (Development > Development settings > Message push) for avatar verdicts."""

    url: str
    token: str
    encoding: str = "plain text (明文模式)"
    data_format: str = "JSON"


class ContentSafety(msgspec.Struct, frozen=True, kw_only=True):
    application: Application
    #: Absent when content safety is off or the application has no mini program.
    message_push: MessagePush | None = None


async def set_content_safety(
    conn: Conn, application: str, value: bool, *, issuer: str, master: MasterKey | None = None
) -> ContentSafety:
    """Whether ``application``'s users' display names and avatars pass WeChat's content security first; with it on,
    the message-push settings WeChat needs to deliver avatar verdicts (``user_store/content_safety.py``)."""
    if not await set_application_content_safety(conn, application, value):
        raise NotFound("application {application!r} does not exist", application=application)
    app = await get_application(conn, application)
    row = await miniprogram_provider(conn, app.client_id)
    if not value or row is None or row["provider"] is None:
        return ContentSafety(application=app)
    secret = open_secret(master, row["provider_id"], row["provider"], row["app_secret"], row["app_secret_sealed"])
    url = f"{issuer.rstrip('/')}/api/wechat-push/{row['appid']}"
    return ContentSafety(application=app, message_push=MessagePush(url=url, token=push_token(secret)))


async def set_preprovisioned_only(conn: Conn, application: str, value: bool) -> Application:
    """Whether ``application`` signs in (by phone) only users created beforehand (``create_user``)."""
    if not await set_application_preprovisioned_only(conn, application, value):
        raise NotFound("application {application!r} does not exist", application=application)
    return await get_application(conn, application)
