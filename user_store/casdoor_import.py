"""Moving from Casdoor: its ``init_data.json`` (the format of ``init_data.json.template`` in casdoor/casdoor, read by
``object/init_data.go``) into minidoor, for ``make import-casdoor``.

What is imported, each object only when absent (so a second run changes nothing; what exists is reported
``unchanged``, or skipped with the reason when it differs from the file):

- ``organizations``: name, displayName, defaultAvatar.
- ``providers`` of type ``WeChatMiniProgram`` (clientId = AppID, clientSecret = AppSecret, sealed with the master
  key); every other type is skipped, minidoor logs mini programs in only.
- ``applications``: name, organization, the **same** clientId and clientSecret (only its sha256 is kept),
  enableSignUp, expireInHours, refreshExpireInHours, tokenSigningMethod (RS256 or ES256), and the mini-program
  providers it lists.
- ``users``: id (Casdoor's UUID), name, displayName, avatar, email, phone, countryCode, type, isAdmin,
  isForbidden, isDeleted, signupApplication, properties, createdTime, and the WeChat identity: the openid from
  ``properties.wechatOpenId``, else the ``wechat`` column (``properties.wechatUnionId`` the unionid), bound to the
  AppID of the mini-program provider of the user's sign-up application, else of its organization's only one.
  Passwords are not imported (Casdoor's hashes are not minidoor's argon2id): each is reported.
- ``certs`` (``with_certs``): an x509 RS256 or ES256 certificate with its private key becomes the current signing
  key of its algorithm (``keyring.import_key``), its kid the cert's name as in the tokens Casdoor issued: those keep
  verifying locally (JWKS, the SDKs' ``parse_jwt_token`` with the same certificate), and so do the tokens minidoor
  signs from now on. Tokens Casdoor issued have no row here: introspection and the account API refuse them.

Everything runs in the caller's transaction; a dry run rolls it back after reporting what it would have done.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.errors import BadRequest, MinidoorError
from shared.guard import valid_client_id
from shared.jwtcheck import SIGNING_ALGORITHMS
from user_store import admin
from user_store.db import Conn
from user_store.master_key import MasterKey
from user_store.queries import imports as queries
from user_store.queries.applications import application_by_name, insert_application, organization_by_name
from user_store.signing_keys import keyring
from user_store.signing_keys.material import load_private_key, private_key_pem

MINIPROGRAM = "WeChatMiniProgram"


@dataclass
class Report:
    """What an import did (or, in a dry run, would do): one entry per object, and the reasons for each skip."""

    dry_run: bool
    created: list[dict[str, str]] = field(default_factory=list)
    unchanged: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, outcome: str, kind: str, name: str, reason: str = "") -> None:
        entry = {"kind": kind, "name": name, **({"reason": reason} if reason else {})}
        {"created": self.created, "unchanged": self.unchanged, "skipped": self.skipped}[outcome].append(entry)

    def as_json(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for outcome, entries in (("created", self.created), ("unchanged", self.unchanged), ("skipped", self.skipped)):
            for entry in entries:
                per_kind = counts.setdefault(entry["kind"], {"created": 0, "unchanged": 0, "skipped": 0})
                per_kind[outcome] += 1
        return {
            "dryRun": self.dry_run,
            "counts": counts,
            "created": self.created,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


def read_init_data(raw: bytes) -> dict[str, Any]:
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest("the file is not JSON: {detail}", detail=str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRequest("the file must be a JSON object, as Casdoor's init_data.json is")
    return doc


def _items(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = doc.get(key) or []
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return value.strip() if isinstance(value, str) else ""


async def import_init_data(
    conn: Conn, doc: dict[str, Any], *, master: MasterKey | None, with_certs: bool = False, dry_run: bool = False
) -> Report:
    """Import ``doc``; the caller's transaction is kept (dry run: rolled back to where it was)."""
    report = Report(dry_run=dry_run)
    savepoint = conn.transaction()
    await savepoint.start()
    try:
        for org in _items(doc, "organizations"):
            await _organization(conn, org, report)
        providers = {_text(p, "name"): p for p in _items(doc, "providers")}
        for name, provider in providers.items():
            if _text(provider, "type") != MINIPROGRAM:
                report.add("skipped", "provider", name, f"type {_text(provider, 'type')!r}: only {MINIPROGRAM}")
        for app in _items(doc, "applications"):
            await _application(conn, app, providers, report, master)
        if with_certs:
            await _certs(conn, doc, report, master)
        else:
            for cert in _items(doc, "certs"):
                report.add("skipped", "cert", _text(cert, "name"), "certificates are imported with WITH_CERTS=1")
        for user in _items(doc, "users"):
            await _user(conn, user, providers, doc, report)
    except BaseException:
        await savepoint.rollback()
        raise
    if dry_run:
        await savepoint.rollback()
    else:
        await savepoint.commit()
    return report


async def _organization(conn: Conn, org: dict[str, Any], report: Report) -> None:
    name = _text(org, "name")
    if not name:
        report.add("skipped", "organization", name, "no name")
        return
    if await organization_by_name(conn, name) is not None:
        report.add("unchanged", "organization", name)
        return
    await admin.create_organization(conn, name, display_name=_text(org, "displayName"))
    await queries.set_default_avatar(conn, name, _text(org, "defaultAvatar"))
    report.add("created", "organization", name)


async def _application(
    conn: Conn, app: dict[str, Any], providers: dict[str, dict[str, Any]], report: Report, master: MasterKey | None
) -> None:
    name, client_id, secret = _text(app, "name"), _text(app, "clientId"), _text(app, "clientSecret")
    if not name or not valid_client_id(client_id) or not secret:
        report.add("skipped", "application", name, "a name, a clientId (letters, digits, - and _) and a clientSecret")
        return
    existing = await application_by_name(conn, name)
    if existing is None:
        if not await _create_application(conn, app, report, master):
            return
    elif existing["client_id"] == client_id and hmac.compare_digest(
        await queries.client_secret_hash(conn, name), hashlib.sha256(secret.encode()).digest()
    ):
        report.add("unchanged", "application", name)
    else:
        report.add("skipped", "application", name, "exists with another clientId or clientSecret: left as is")
        return
    await _link_providers(conn, name, app, providers, report, master)


async def _create_application(conn: Conn, app: dict[str, Any], report: Report, master: MasterKey | None) -> bool:
    name, organization = _text(app, "name"), _text(app, "organization")
    hours, refresh = app.get("expireInHours"), app.get("refreshExpireInHours")
    try:
        alg = admin.check_signing_alg(_text(app, "tokenSigningMethod") or "RS256")
        async with conn.transaction():
            added = await insert_application(
                conn,
                name=name,
                organization=organization,
                client_id=_text(app, "clientId"),
                client_secret_hash=hashlib.sha256(_text(app, "clientSecret").encode()).digest(),
                enable_sign_up=app.get("enableSignUp") is not False,
                expire_in_hours=float(hours) if isinstance(hours, int | float) and hours > 0 else 168.0,
                signing_alg=alg,
            )
            if added and alg != "RS256":
                await keyring.ensure_key(conn, master, alg)
            if added and isinstance(refresh, int | float) and refresh > 0:
                await queries.set_refresh_expiry(conn, name, float(refresh))
    except MinidoorError as exc:
        report.add("skipped", "application", name, exc.description)
        return False
    if not added:
        report.add("skipped", "application", name, f"organization {organization!r} does not exist")
        return False
    report.add("created", "application", name)
    return True


async def _link_providers(
    conn: Conn,
    name: str,
    app: dict[str, Any],
    providers: dict[str, dict[str, Any]],
    report: Report,
    master: MasterKey | None,
) -> None:
    row = await application_by_name(conn, name)
    linked = set(row["providers"]) if row is not None else set()
    for item in app.get("providers") or []:
        pname = _text(item, "name") if isinstance(item, dict) else ""
        provider = providers.get(pname)
        if provider is None or _text(provider, "type") != MINIPROGRAM:
            continue  # reported with the providers
        appid, app_secret = _text(provider, "clientId"), _text(provider, "clientSecret")
        if not appid or not app_secret:
            report.add("skipped", "provider", pname, "a WeChatMiniProgram provider needs clientId and clientSecret")
        elif pname in linked:
            report.add("unchanged", "provider", pname)
        else:
            try:
                await admin.attach_miniprogram_provider(conn, name, appid, app_secret, name=pname, master=master)
            except MinidoorError as exc:
                report.add("skipped", "provider", pname, exc.description)
                continue
            report.add("created", "provider", pname)


async def _certs(conn: Conn, doc: dict[str, Any], report: Report, master: MasterKey | None) -> None:
    for cert in _items(doc, "certs"):
        kid, certificate, private = _text(cert, "name"), _text(cert, "certificate"), _text(cert, "privateKey")
        alg = next((alg for alg in SIGNING_ALGORITHMS if alg == _text(cert, "cryptoAlgorithm")), None)
        if alg is None or not kid or not certificate or not private or _text(cert, "type") not in ("", "x509"):
            report.add("skipped", "cert", kid, "an x509 RS256 or ES256 cert with its certificate and privateKey")
            continue
        if await queries.signing_key_exists(conn, kid):
            report.add("unchanged", "cert", kid)
            continue
        try:
            pem = private_key_pem(load_private_key(kid, private.encode(), alg))
        except (ValueError, TypeError, MinidoorError) as exc:
            report.add("skipped", "cert", kid, f"the privateKey does not load as an {alg} key ({type(exc).__name__})")
            continue
        await keyring.import_key(conn, master, kid, alg, pem, certificate.strip() + "\n")
        report.add("created", "cert", kid)


async def _user(
    conn: Conn, user: dict[str, Any], providers: dict[str, dict[str, Any]], doc: dict[str, Any], report: Report
) -> None:
    owner, name = _text(user, "owner"), _text(user, "name")
    label = f"{owner}/{name}"
    try:
        user_id = uuid.UUID(_text(user, "id"))
    except ValueError:
        report.add("skipped", "user", label, "no Casdoor id (a UUID)")
        return
    org = await organization_by_name(conn, owner)
    if org is None or not name:
        report.add("skipped", "user", label, f"organization {owner!r} does not exist" if name else "no name")
        return
    existing = await queries.user_by_id(conn, user_id)
    if existing is not None:
        if (existing["organization_id"], existing["name"]) == (org["id"], name):
            report.add("unchanged", "user", label)
        else:
            report.add("skipped", "user", label, "its id belongs to another user here")
        return
    properties = {k: v for k, v in (user.get("properties") or {}).items() if isinstance(v, str)}
    openid = properties.get("wechatOpenId") or _text(user, "wechat")
    unionid = properties.get("wechatUnionId", "")
    appid = await _identity_appid(conn, user, org["id"])
    try:
        async with conn.transaction():
            await queries.insert_user(
                conn,
                user_id=user_id,
                organization_id=org["id"],
                name=name,
                display_name=_text(user, "displayName"),
                avatar=_text(user, "avatar"),
                email=_text(user, "email"),
                phone=_text(user, "phone"),
                country_code=_text(user, "countryCode"),
                type=_text(user, "type") or "normal-user",
                signup_application=_text(user, "signupApplication"),
                is_admin=user.get("isAdmin") is True,
                is_forbidden=user.get("isForbidden") is True,
                is_deleted=user.get("isDeleted") is True,
                properties=properties,
                created_at=_time(_text(user, "createdTime")),
            )
            if openid and appid:
                await queries.insert_identity(conn, org["id"], user_id, appid, openid, unionid)
    except MinidoorError as exc:
        report.add("skipped", "user", label, exc.description)
        return
    report.add("created", "user", label)
    if openid and not appid:
        report.add("skipped", "identity", label, "no WeChatMiniProgram provider to bind its openid to")
    if _text(user, "password"):
        report.add("skipped", "password", label, "Casdoor's password hash is not imported: set a new one")


async def _identity_appid(conn: Conn, user: dict[str, Any], organization_id: Any) -> str:
    """The AppID a user's openid belongs to: its sign-up application's mini program, else its organization's only
    one."""
    signup = _text(user, "signupApplication")
    if signup:
        appid = await queries.application_appid(conn, signup)
        if appid:
            return appid
    appids = await queries.organization_appids(conn, organization_id)
    return appids[0] if len(appids) == 1 else ""


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return datetime.now(UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
