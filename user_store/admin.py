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
from user_store.db import Conn
from user_store.master_key import MasterKey
from user_store.provider_secrets import check_master_key, secret_columns
from user_store.queries import PROVIDER_TYPE, translate
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


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    organizations: list[Organization]
    applications: list[Application]
    providers: list[Provider]


def _secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 100 or not name.isprintable() or name != name.strip():
        raise BadRequest(f"invalid {kind} name {name!r}")


_APPLICATIONS = """
    SELECT a.name, o.name AS organization, a.client_id, a.enable_sign_up, a.expire_in_hours,
           a.refresh_expire_in_hours, a.signing_alg, a.created_at,
           coalesce(array_agg(p.name ORDER BY ap.position) FILTER (WHERE p.name IS NOT NULL), '{}') AS providers
    FROM applications a
    JOIN organizations o ON o.id = a.organization_id
    LEFT JOIN application_providers ap ON ap.application_id = a.id
    LEFT JOIN providers p ON p.id = ap.provider_id
"""


async def create_organization(conn: Conn, name: str, display_name: str = "") -> Organization:
    """A new organization; ``Conflict`` when the name is taken."""
    _check_name("organization", name)
    with translate(f"organization {name!r}"):
        row = await conn.fetchrow(
            "INSERT INTO organizations (name, display_name) VALUES ($1, $2) RETURNING *", name, display_name
        )
    assert row is not None
    return _organization(row)


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
        raise BadRequest(f"the signing algorithm must be {' or '.join(SIGNING_ALGORITHMS)}, not {alg!r}")
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
        with translate(f"application {name!r}"):
            org_id = await conn.fetchval("SELECT id FROM organizations WHERE name = $1", organization)
            if org_id is None:
                raise NotFound(f"organization {organization!r} does not exist")
            await conn.execute(
                """
                INSERT INTO applications (name, organization_id, client_id, client_secret_hash, enable_sign_up,
                                          expire_in_hours, signing_alg)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                """,
                name,
                org_id,
                client_id,
                _secret_hash(client_secret),
                enable_sign_up,
                expire_in_hours,
                alg,
            )
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
        with translate("application"):
            updated = await conn.fetchval(
                "UPDATE applications SET signing_alg = $2 WHERE name = $1 RETURNING id", application, alg
            )
        if updated is None:
            raise NotFound(f"application {application!r} does not exist")
        await _ensure_signing_key(conn, alg, master)
        app = await get_application(conn, application)
    return app


async def _ensure_signing_key(conn: Conn, alg: SigningAlg, master: MasterKey | None) -> None:
    if alg != "RS256":
        await keyring.ensure_key(conn, master, alg)


async def get_application(conn: Conn, name: str) -> Application:
    """The application called ``name`` (no secret); ``NotFound`` when there is none."""
    with translate("application"):
        row = await conn.fetchrow(_APPLICATIONS + " WHERE a.name = $1 GROUP BY a.id, o.name", name)
    if row is None:
        raise NotFound(f"application {name!r} does not exist")
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
        providers=list(row["providers"]),
        created_time=row["created_at"],
    )


async def rotate_client_secret(conn: Conn, application: str) -> str:
    """Replace the application's client secret; return the new one (shown once)."""
    secret = secrets.token_hex(20)
    with translate("application"):
        updated = await conn.fetchval(
            "UPDATE applications SET client_secret_hash = $2 WHERE name = $1 RETURNING id",
            application,
            _secret_hash(secret),
        )
    if updated is None:
        raise NotFound(f"application {application!r} does not exist")
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
        with translate(f"provider {name!r}"):
            await check_master_key(conn, master)
            app_id = await conn.fetchval("SELECT id FROM applications WHERE name = $1 FOR UPDATE", application)
            if app_id is None:
                raise NotFound(f"application {application!r} does not exist")
            # The id is chosen here because the sealed secret is bound to it; a row already named so keeps its own.
            provider_id = uuid.uuid4()
            row = await conn.fetchrow(
                """
                INSERT INTO providers (id, name, type, appid, app_secret, app_secret_sealed)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (name) DO NOTHING
                RETURNING *
                """,
                provider_id,
                name,
                PROVIDER_TYPE,
                appid,
                *secret_columns(master, provider_id, secret),
            )
            if row is None:
                provider_id = await conn.fetchval(
                    "SELECT id FROM providers WHERE name = $1 AND type = $2 AND appid = $3 FOR UPDATE",
                    name,
                    PROVIDER_TYPE,
                    appid,
                )
                if provider_id is None:
                    raise Conflict(f"provider {name!r} already exists with another type or appid")
                row = await conn.fetchrow(
                    "UPDATE providers SET app_secret = $2, app_secret_sealed = $3 WHERE id = $1 RETURNING *",
                    provider_id,
                    *secret_columns(master, provider_id, secret),
                )
                assert row is not None
            await conn.execute(
                """
                INSERT INTO application_providers (application_id, provider_id, position)
                SELECT $1, $2, coalesce(max(position) + 1, 0) FROM application_providers WHERE application_id = $1
                ON CONFLICT (application_id, provider_id) DO NOTHING
                """,
                app_id,
                row["id"],
            )
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
    with translate("listing"):
        orgs = await conn.fetch("SELECT * FROM organizations ORDER BY name")
        apps = await conn.fetch(_APPLICATIONS + " GROUP BY a.id, o.name ORDER BY a.name")
        providers = await conn.fetch("SELECT * FROM providers ORDER BY name")
    return Listing(
        organizations=[_organization(r) for r in orgs],
        applications=[_application(r) for r in apps],
        providers=[_provider(r) for r in providers],
    )
