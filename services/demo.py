"""The demo organization, application and WeChat mini-program provider that ``make run`` seeds once, and the
``demo.json`` + console banner that tell a newcomer how to log in with them."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import asyncpg
import msgspec

from shared.errors import Conflict, NotFound
from shared.jwtcheck import SigningAlg
from user_store import admin
from user_store.master_key import MasterKey
from user_store.migrate import apply_migrations
from user_store.provider_secrets import open_secret
from user_store.queries.applications import miniprogram_provider
from user_store.signing_keys import certificates, keyring

ORGANIZATION = "demo"
APPLICATION = "demo-app"


class Demo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What ``STATE_DIR/demo.json`` holds."""

    gateway: str
    sandbox: str
    organization: str
    application: str
    client_id: str
    client_secret: str
    wechat_app_id: str
    #: Not in demo.json's documented keys, but the runner needs it to teach the sandbox the app's secret.
    wechat_app_secret: str
    #: PEM X.509 of the signing key, what a Casdoor server SDK verifies tokens with ("" until a key exists).
    certificate: str = ""
    #: RS256 or ES256 (``DEFAULT_SIGNING_ALG``): what signs the demo application's tokens.
    signing_alg: str = "RS256"

    @property
    def sandbox_apps(self) -> str:
        return f"{self.wechat_app_id}:{self.wechat_app_secret}"


async def seed_demo(
    database_url: str,
    state_dir: Path,
    gateway: str,
    sandbox: str,
    *,
    master: MasterKey | None = None,
    signing_alg: SigningAlg = "RS256",
) -> Demo:
    """Migrate, create the demo data if missing, and (re)write ``demo.json``. Safe to run on every start.

    The demo application signs with ``signing_alg``, switched to it when it signed otherwise. With the user store's
    ``master`` key, the signing keys are prepared as the user store will at its start (idempotent), so
    ``certificate`` is there from the first run; without, it is the current key's if any. The provider's secret is
    sealed with it, and opened with it for the sandbox."""
    demo_file = state_dir / "demo.json"
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        async with conn.transaction():
            try:
                app = msgspec.to_builtins(await admin.get_application(conn, APPLICATION))
            except NotFound:
                app = await _create(conn, master, signing_alg)
            if app["tokenSigningMethod"] != signing_alg:
                await admin.set_signing_alg(conn, APPLICATION, signing_alg, master=master)
            client_secret = app.get("clientSecret") or _saved_secret(demo_file, app["clientId"])
            if not client_secret:
                # The secret is stored hashed; without the old demo.json the only way to show one is a new one.
                client_secret = await admin.rotate_client_secret(conn, APPLICATION)
            provider = await miniprogram_provider(conn, app["clientId"])
            assert provider is not None and provider["appid"], "the demo application lost its mini-program provider"
            app_secret = open_secret(
                master,
                provider["provider_id"],
                provider["provider"],
                provider["app_secret"],
                provider["app_secret_sealed"],
            )
        if master is not None:
            await keyring.prepare_keys(conn, master)
        certificate = await _certificate(conn)
    finally:
        await conn.close()
    demo = Demo(
        gateway=gateway,
        sandbox=sandbox,
        organization=ORGANIZATION,
        application=APPLICATION,
        client_id=app["clientId"],
        client_secret=client_secret,
        wechat_app_id=provider["appid"],
        wechat_app_secret=app_secret,
        certificate=certificate,
        signing_alg=signing_alg,
    )
    # Created 0600 rather than chmod-ed after the write: it holds the client secret from its first byte.
    fd = os.open(demo_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.format(msgspec.json.encode(demo), indent=2) + b"\n")
    return demo


async def _create(conn: asyncpg.Connection, master: MasterKey | None, signing_alg: SigningAlg) -> dict[str, str]:
    try:
        await admin.create_organization(conn, ORGANIZATION, display_name="Demo organization")
    except Conflict:
        pass  # made by hand or by an earlier seed: reuse it
    app = msgspec.to_builtins(
        await admin.create_application(conn, ORGANIZATION, APPLICATION, signing_alg=signing_alg, master=master)
    )
    appid = "wx" + secrets.token_hex(8)
    await admin.attach_miniprogram_provider(conn, APPLICATION, appid, secrets.token_hex(16), master=master)
    return dict(app)


async def _certificate(conn: asyncpg.Connection) -> str:
    try:
        cert = await certificates.application_certificate(conn, APPLICATION)
    except NotFound:
        return ""
    return cert.certificate


def _saved_secret(demo_file: Path, client_id: str) -> str:
    try:
        saved = json.loads(demo_file.read_text())
    except (OSError, ValueError):
        return ""
    return str(saved.get("clientSecret", "")) if saved.get("clientId") == client_id else ""


#: How the banner starts: the stack's "go" for a user of `make run` (and for the tests that start it).
READY_BANNER = "minidoor is ready in"


def print_banner(demo: Demo, seconds: float) -> None:
    login = (
        f"curl -s -X POST {demo.sandbox}/sandbox/login -H 'Content-Type: application/json' "
        f'-d \'{{"appid": "{demo.wechat_app_id}", "openid": "demo-user-1"}}\''
    )
    token = (
        f"curl -s -X POST {demo.gateway}/api/login/oauth/access_token "
        f"-d tag=wechat_miniprogram -d client_id={demo.client_id} -d code=CODE_FROM_ABOVE"
    )
    both = (
        f"CODE=$({login} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"code\"])') && "
        f"curl -s -X POST {demo.gateway}/api/login/oauth/access_token "
        f"-d tag=wechat_miniprogram -d client_id={demo.client_id} -d code=$CODE"
    )
    print(
        f"\n{READY_BANNER} {seconds:.1f}s: gateway {demo.gateway}, WeChat sandbox {demo.sandbox}\n"
        f"Demo data: demo.json in the state directory (client_id {demo.client_id}).\n\n"
        f"1) Get a wx.login() code from the sandbox:\n   {login}\n"
        f"2) Log in with it:\n   {token}\n"
        f"Or both at once:\n   {both}\n\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )
