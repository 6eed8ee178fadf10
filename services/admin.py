"""``python -m services admin ...``: manage organizations, applications and WeChat mini-program providers.

It talks to ``DATABASE_URL``, or to the embedded PostgreSQL under ``STATE_DIR`` (started for the command if the
stack is not running). Output is JSON on stdout; errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from services.embedded import EmbeddedPostgres
from shared.errors import MinidoorError
from user_store import admin, certificates, keyring, rekey
from user_store.keycrypto import MasterKey, master_key_from_env
from user_store.migrate import apply_migrations

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
    p.set_defaults(admin_fn=_create_app)

    p = cmds.add_parser("attach-provider", help="attach a WeChat mini-program provider (appid, secret)")
    p.add_argument("--app", required=True)
    p.add_argument("--appid", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--name", default=None, help="provider name (default wechat-mp-<appid>)")
    p.set_defaults(admin_fn=_attach_provider)

    p = cmds.add_parser("rotate-secret", help="issue a new client secret for an application")
    p.add_argument("--app", required=True)
    p.set_defaults(admin_fn=_rotate_secret)

    p = cmds.add_parser("rotate-keys", help="make a new signing key; new tokens use it after --activate-in seconds")
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


async def _create_org(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await admin.create_organization(conn, args.name, display_name=args.display_name)


async def _create_app(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await admin.create_application(
        conn, args.org, args.name, enable_sign_up=not args.no_sign_up, expire_in_hours=args.expire_in_hours
    )


async def _attach_provider(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)  # the secret is sealed as the user store seals it
    return await admin.attach_miniprogram_provider(
        conn, args.app, args.appid, args.secret, name=args.name, master=master
    )


async def _rotate_secret(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return {"application": args.app, "clientSecret": await admin.rotate_client_secret(conn, args.app)}


def _master_key() -> MasterKey | None:
    # The runner's default place for the master key, so `make rotate-keys` / `attach-provider` work next to `make run`.
    return master_key_from_env(os.environ, Path(os.environ.get("STATE_DIR", ".run")).resolve() / "master.key")


async def _rotate_keys(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)
    return await keyring.rotate_keys(conn, master, activate_in=args.activate_in)


async def _rotate_master_key(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    master = await asyncio.to_thread(_master_key)
    return await rekey.reseal_all(conn, master)


async def _retire_key(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await keyring.retire_key(conn, args.kid)


async def _list_keys(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await keyring.list_keys(conn)


async def _certificate(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    cert = await certificates.application_certificate(conn, args.app)
    return cert.certificate.encode() if args.pem else cert


async def _list(conn: asyncpg.Connection, args: argparse.Namespace) -> Any:
    return await admin.list_all(conn)


def run(args: argparse.Namespace) -> int:
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
