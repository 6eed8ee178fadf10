"""``python -m services admin ...``: manage organizations, applications and WeChat mini-program providers, and
read the audit log.

It talks to ``DATABASE_URL``, or to the embedded PostgreSQL under ``STATE_DIR`` (started for the command if the
stack is not running). Output is JSON on stdout; errors are one line on stderr and exit code 1. Each command that
changes something writes its audit event in its own transaction (actor: the OS user running it).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis

from services.embedded import EmbeddedPostgres, running_redis_url
from shared.errors import BadRequest, MinidoorError, NotFound
from shared.jwtcheck import SIGNING_ALGORITHMS
from shared.logs import configure_logging
from shared.messages import AuditEvent
from shared.redis_keys import RedisKeys
from user_store import admin, audit, casdoor_import, erasure, rekey
from user_store.master_key import MasterKey, master_key_from_env
from user_store.migrate import apply_migrations
from user_store.queries.users import find_user
from user_store.revocations import Revocations
from user_store.signing_keys import certificates, keyring

#: Where ``attach-provider`` reads the AppSecret when no ``--secret-file`` is given (then stdin).
SECRET_ENV = "WECHAT_APP_SECRET"
#: The signing algorithm of a new application when ``create-app`` is given no ``--alg`` (else RS256).
ALG_ENV = "DEFAULT_SIGNING_ALG"

Command = Callable[[asyncpg.Connection, argparse.Namespace], Awaitable[Any]]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("admin", help="manage organizations, applications and providers")
    cmds = parser.add_subparsers(dest="admin_command", required=True)

    p = cmds.add_parser("create-org", help="create an organization")
    p.add_argument("--name", required=True)
    p.add_argument("--display-name", default="")
    p.set_defaults(admin_fn=_create_org)

    p = cmds.add_parser("create-app", help="create an application; prints clientId and clientSecret once")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--no-sign-up", action="store_true", help="log in existing users only")
    p.add_argument("--expire-in-hours", type=float, default=168.0)
    p.add_argument(
        "--alg",
        choices=SIGNING_ALGORITHMS,
        default=None,
        help=f"what signs its tokens (default ${ALG_ENV}, else RS256); ES256 is not for Casdoor's Node.js SDK",
    )
    p.set_defaults(admin_fn=_create_app)

    p = cmds.add_parser("set-alg", help="sign an application's new tokens with another algorithm")
    p.add_argument("--app", required=True)
    p.add_argument("--alg", required=True, choices=SIGNING_ALGORITHMS)
    p.set_defaults(admin_fn=_set_alg)

    p = cmds.add_parser(
        "attach-provider",
        help=f"attach a WeChat mini-program provider; the AppSecret comes from --secret-file, {SECRET_ENV} or stdin",
    )
    p.add_argument("--app", required=True)
    p.add_argument("--appid", required=True)
    p.add_argument("--secret-file", default="", help="a file holding the AppSecret ('-': stdin)")
    # Refused: an argument shows in `ps`, in shell history and in what make echoes.
    p.add_argument("--secret", default=None, help=argparse.SUPPRESS)
    p.add_argument("--name", default=None, help="provider name (default wechat-mp-<appid>)")
    p.set_defaults(admin_fn=_attach_provider)

    p = cmds.add_parser("create-user", help="create a user who signs in with a phone number (WeChat's phone button)")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--phone", required=True, help="digits, without the country code")
    p.add_argument("--country-code", default="86")
    p.set_defaults(admin_fn=_create_user)

    p = cmds.add_parser(
        "set-preprovisioned", help="phone sign-in only for users created beforehand (create-user), or for anyone"
    )
    p.add_argument("--app", required=True)
    p.add_argument("--on", choices=("1", "0"), required=True)
    p.set_defaults(admin_fn=_set_preprovisioned)

    p = cmds.add_parser(
        "set-content-safety",
        help="display names and avatars of the application's users pass WeChat's content security first, or not",
    )
    p.add_argument("--app", required=True)
    p.add_argument("--on", choices=("1", "0"), required=True)
    p.set_defaults(admin_fn=_set_content_safety)

    p = cmds.add_parser("rotate-secret", help="issue a new client secret for an application")
    p.add_argument("--app", required=True)
    p.set_defaults(admin_fn=_rotate_secret)

    p = cmds.add_parser(
        "rotate-keys", help="make a new signing key per algorithm; new tokens use it after --activate-in seconds"
    )
    p.add_argument(
        "--alg",
        choices=SIGNING_ALGORITHMS,
        action="append",
        help="only this algorithm's key (repeatable; default: every algorithm in use)",
    )
    p.add_argument(
        "--activate-in",
        type=float,
        default=keyring.DEFAULT_ACTIVATE_IN,
        help="seconds the new key is in the JWKS before it signs, so every cache has it (default %(default)s)",
    )
    p.set_defaults(admin_fn=_rotate_keys)

    p = cmds.add_parser(
        "rotate-master-key", help="re-seal every sealed column under MASTER_KEY, reading MASTER_KEY_PREVIOUS too"
    )
    p.set_defaults(admin_fn=_rotate_master_key)

    p = cmds.add_parser("retire-key", help="remove a signing key now: the tokens it signed stop verifying")
    p.add_argument("--kid", required=True)
    p.set_defaults(admin_fn=_retire_key)

    p = cmds.add_parser("list-keys", help="signing keys and their status (pending, current, superseded, ...)")
    p.set_defaults(admin_fn=_list_keys)

    p = cmds.add_parser("certificate", help="the X.509 certificate (PEM) a Casdoor server SDK verifies tokens with")
    p.add_argument("--app", required=True)
    p.add_argument("--pem", action="store_true", help="print only the PEM, e.g. to redirect it into a file")
    p.set_defaults(admin_fn=_certificate)

    p = cmds.add_parser("list", help="organizations, applications and providers")
    p.set_defaults(admin_fn=_list)

    p = cmds.add_parser(
        "delete-user",
        help="erase a user: every token revoked (broadcast through REDIS_URL), its data erased, a tombstone kept",
    )
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p.set_defaults(admin_fn=_delete_user)

    p = cmds.add_parser(
        "import-casdoor", help="import Casdoor's init_data.json: organizations, applications, providers, users"
    )
    p.add_argument("--file", required=True, help="the init_data.json file")
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.add_argument("--with-certs", action="store_true", help="also the certs (signing keys) with their private keys")
    p.set_defaults(admin_fn=_import_casdoor)

    p = cmds.add_parser("audit", help="the audit log, one JSON line per event, oldest first")
    p.add_argument("--org", default="", help="only this organization's events")
    p.add_argument("--since", default="", help="only events at or after this ISO 8601 time, e.g. 2026-12-01T00:00Z")
    p.set_defaults(admin_fn=_audit)


def _admin_event(action: str, **fields: Any) -> AuditEvent:
    try:
        actor = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's arbitrary uid)
        actor = str(os.getuid())
    return AuditEvent(action=action, actor_kind="admin", actor_id=actor, **fields)


async def _record(conn: asyncpg.Connection, action: str, **fields: Any) -> None:
    await audit.insert_events(conn, [_admin_event(action, **fields)])


async def _create_org(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    org = await admin.create_organization(conn, args.name, display_name=args.display_name)
    await _record(conn, "admin.create_org", organization=org.name)
    return org


async def _create_user(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    user = await admin.create_user(conn, args.org, args.name, args.phone, args.country_code)
    # No phone number in the audit log: the row says who was created, not their number.
    await _record(conn, "admin.create_user", organization=user.owner, target_user_id=user.id)
    return user


async def _set_preprovisioned(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    app = await admin.set_preprovisioned_only(conn, args.app, args.on == "1")
    await _record(
        conn,
        "admin.set_preprovisioned",
        organization=app.organization,
        application=app.name,
        client_id=app.client_id,
        details={"preprovisioned_only": app.preprovisioned_only},
    )
    return app


async def _set_content_safety(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)  # the push Token derives from the (sealed) AppSecret
    issuer = os.environ.get("ISSUER", "http://127.0.0.1:8000")
    result = await admin.set_content_safety(conn, args.app, args.on == "1", issuer=issuer, master=master)
    app = result.application
    await _record(
        conn,
        "admin.set_content_safety",
        organization=app.organization,
        application=app.name,
        client_id=app.client_id,
        details={"content_safety": app.content_safety},
    )
    return result


async def _create_app(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    alg = args.alg or default_signing_alg(os.environ)
    master = await asyncio.to_thread(_master_key)  # a first ES256 key is sealed as the user store seals keys
    app = await admin.create_application(
        conn,
        args.org,
        args.name,
        enable_sign_up=not args.no_sign_up,
        expire_in_hours=args.expire_in_hours,
        signing_alg=alg,
        master=master,
    )
    await _record(
        conn,
        "admin.create_app",
        organization=app.organization,
        application=app.name,
        client_id=app.client_id,
        details={"signing_alg": app.signing_alg},
    )
    return app


def default_signing_alg(environ: Mapping[str, str]) -> str:
    """``$DEFAULT_SIGNING_ALG``, else RS256; ``BadRequest`` naming the variable for another value."""
    alg = environ.get(ALG_ENV) or "RS256"
    if alg not in SIGNING_ALGORITHMS:
        raise BadRequest(
            "{variable} must be {choices}, not {alg!r}",
            variable=ALG_ENV,
            choices=" or ".join(SIGNING_ALGORITHMS),
            alg=alg,
        )
    return alg


async def _set_alg(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)
    app = await admin.set_signing_alg(conn, args.app, args.alg, master=master)
    await _record(
        conn,
        "admin.set_alg",
        organization=app.organization,
        application=app.name,
        client_id=app.client_id,
        details={"signing_alg": app.signing_alg},
    )
    return app


async def _attach_provider(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    secret = await asyncio.to_thread(read_secret, args.secret_file, os.environ)
    master = await asyncio.to_thread(_master_key)  # the secret is sealed as the user store seals it
    provider = await admin.attach_miniprogram_provider(
        conn, args.app, args.appid, secret, name=args.name, master=master
    )
    app = await admin.get_application(conn, args.app)
    await _record(
        conn,
        "admin.attach_provider",
        organization=app.organization,
        application=app.name,
        client_id=app.client_id,
        details={"provider": provider.name, "appid": args.appid},
    )
    return provider


def read_secret(secret_file: str, environ: Mapping[str, str]) -> str:
    """The AppSecret from ``secret_file`` (``-``: stdin), else ``$WECHAT_APP_SECRET``, else stdin (a hidden prompt on
    a terminal). Never from an argument. Surrounding white space is dropped; an empty secret is an error."""
    if secret_file == "-" or (not secret_file and not environ.get(SECRET_ENV)):
        if sys.stdin.isatty():
            secret = getpass.getpass("WeChat AppSecret: ")
        else:
            secret = sys.stdin.readline()
        source = "stdin"
    elif secret_file:
        try:
            secret = Path(secret_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequest(
                "cannot read the AppSecret from {secret_file}: {detail}", secret_file=str(secret_file), detail=str(exc)
            ) from None
        source = secret_file
    else:
        secret, source = environ[SECRET_ENV], SECRET_ENV
    secret = secret.strip()
    if not secret:
        raise BadRequest("the AppSecret from {source} is empty", source=source)
    return secret


async def _rotate_secret(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    secret = await admin.rotate_client_secret(conn, args.app)
    app = await admin.get_application(conn, args.app)
    await _record(
        conn, "admin.rotate_secret", organization=app.organization, application=app.name, client_id=app.client_id
    )
    return {"application": args.app, "clientSecret": secret}


def _master_key() -> MasterKey | None:
    # The runner's default place for the master key, so `make rotate-keys` / `attach-provider` work next to `make run`.
    return master_key_from_env(os.environ, Path(os.environ.get("STATE_DIR", ".run")).resolve() / "master.key")


async def _rotate_keys(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)
    keys = await keyring.rotate_keys(conn, master, args.alg, activate_in=args.activate_in)
    for key in keys:
        details = {"kid": key.kid, "algorithm": key.algorithm, "activate_in_s": args.activate_in}
        await _record(conn, "admin.rotate_keys", details=details)
    return keys


async def _rotate_master_key(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)
    return await rekey.reseal_all(conn, master)


async def _retire_key(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    key = await keyring.retire_key(conn, args.kid)
    await _record(conn, "admin.retire_key", details={"kid": key.kid})
    return key


async def _list_keys(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await keyring.list_keys(conn)


async def _certificate(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    cert = await certificates.application_certificate(conn, args.app)
    return cert.certificate.encode() if args.pem else cert


async def _list(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await admin.list_all(conn)


async def _delete_user(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    row = await find_user(conn, args.org, "name", args.name, lock=True)
    if row is None:
        raise NotFound(f"the user {args.name!r} does not exist in organization {args.org!r}")
    redis_url = os.environ.get("REDIS_URL") or running_redis_url(_state_dir() / "redis")
    redis = aioredis.Redis.from_url(redis_url) if redis_url else None
    try:
        revocations = Revocations(redis, RedisKeys(os.environ.get("KEY_PREFIX") or "minidoor"))
        erased = await erasure.delete_user(conn, revocations, row["id"])
    finally:
        if redis is not None:
            await redis.aclose()
    if redis is None:
        print(
            "warning: no REDIS_URL and no running stack: the revocations were not broadcast, so a gateway that"
            " verifies tokens alone may accept the user's tokens until it next asks the user store",
            file=sys.stderr,
        )
    details = {"revoked": erased.revoked, "identities": erased.identities, "proof": "admin"}
    await _record(conn, "account_deleted", organization=args.org, target_user_id=str(row["id"]), details=details)
    return {"id": str(row["id"]), "revoked": erased.revoked, "identities": erased.identities, "broadcast": bool(redis)}


async def _import_casdoor(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    try:
        raw = await asyncio.to_thread(Path(args.file).read_bytes)
    except OSError as exc:
        raise BadRequest(f"cannot read {args.file}: {exc.strerror}") from None
    doc = casdoor_import.read_init_data(raw)
    master = await asyncio.to_thread(_master_key)
    report = await casdoor_import.import_init_data(
        conn, doc, master=master, with_certs=args.with_certs, dry_run=args.dry_run
    )
    if not args.dry_run and report.created:
        counts = {kind: n["created"] for kind, n in report.as_json()["counts"].items() if n["created"]}
        await _record(conn, "admin.import_casdoor", details=counts)
    return report.as_json()


def _state_dir() -> Path:
    return Path(os.environ.get("STATE_DIR", ".run")).resolve()


async def _audit(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    since = audit.parse_since(args.since) if args.since else None
    async for line in audit.read_events(conn, organization=args.org, since=since):
        sys.stdout.buffer.write(line)
    return b""


def run(args: argparse.Namespace) -> int:
    # Log lines (a migration applied, a first ES256 key made) go to stderr: stdout is the command's JSON alone.
    configure_logging("info", "auto", service="admin")
    if getattr(args, "secret", None) is not None:
        print(
            "error: --secret would put the AppSecret on the command line (ps, shell history, make's echo); pass it on"
            f" stdin, in {SECRET_ENV}, or with --secret-file PATH",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "since", ""):
        try:  # before any database is started: a typo is one line on stderr at once
            audit.parse_since(args.since)
        except MinidoorError as exc:
            print(f"error: {exc.description}", file=sys.stderr)
            return 1
    database_url = os.environ.get("DATABASE_URL", "")
    pg: EmbeddedPostgres | None = None
    if not database_url:
        pg = EmbeddedPostgres(Path(os.environ.get("STATE_DIR", ".run")).resolve() / "postgres")
        database_url = pg.database_url("minidoor")
    try:
        result = asyncio.run(_run(database_url, args.admin_fn, args))
    except MinidoorError as exc:
        print(f"error: {exc.description}", file=sys.stderr)
        return 1
    finally:
        if pg is not None:
            pg.stop()  # stops the server only if this command started it
    if isinstance(result, bytes):  # already the output's final form (certificate --pem)
        sys.stdout.buffer.write(result)
        return 0
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    return 0


async def _run(database_url: str, fn: Command, args: argparse.Namespace) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        async with conn.transaction():
            return await fn(conn, args)
    finally:
        await conn.close()
