"""Signing keys: encrypted at rest under a master key, one ring per algorithm (RS256, ES256), rotated and retired
without a restart or downtime."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.demo import seed_demo
from services.ports import free_port
from shared.config import ConfigError, Secret, UserStoreConfig
from shared.errors import BadRequest
from shared.messages import SigningKeysChanged, token_event_decoder
from shared.redis_keys import RedisKeys
from tests.conftest import SHOP_APPID as APPID
from tests.oauth_helpers import basic, eventually, introspect, kid_of, make_app, refuses, stack_login, stack_verifier
from tests.stack import ROOT, Stack
from user_store import admin
from user_store.appkeys import PG_POOL, SIGNER
from user_store.db import transaction
from user_store.master_key import MasterKey, WrongMasterKey, ensure_master_key_file, load_master_key
from user_store.signing_keys import keyring
from user_store.signing_keys.material import load_private_key
from user_store.tokens import inspect_token

MASTER = "m" * 40
ES256_APPID = "wx-rotation-es256"
TOKEN = "t" * 32


def store_config(pg_url: str, master: str = MASTER, **extra: Any) -> UserStoreConfig:
    return UserStoreConfig(
        internal_token=Secret(TOKEN),
        database_url=Secret(pg_url),
        issuer="http://issuer.test",
        master_key=Secret(master),
        key_reload_interval=0.2,
        **extra,
    )


@pytest.fixture(name="client")
async def _client(pg_url: str):
    async with TestClient(TestServer(create_store(pg_url))) as client:
        yield client


def create_store(pg_url: str, master: str = MASTER, **extra: Any):
    from user_store.app import create_app

    return create_app(store_config(pg_url, master, **extra))


@pytest.fixture(name="provider_master")
def _provider_master() -> MasterKey:
    """The stores here seal with ``MASTER``: so is ``shop``'s AppSecret."""
    return MasterKey(MASTER)


@pytest.fixture(name="es_shop")
async def _es_shop(conn, shop) -> admin.NewApplication:
    """An application of acme signing ES256, beside ``shop`` (RS256)."""
    app = await admin.create_application(conn, "acme", "es-shop", signing_alg="ES256", master=MasterKey(MASTER))
    await admin.attach_miniprogram_provider(conn, "es-shop", ES256_APPID, "wx-secret", master=MasterKey(MASTER))
    return app


async def mint(client, shop, openid: str = "o-1", appid: str = APPID) -> str:
    body = {"client_id": shop.client_id, "appid": appid, "openid": openid, "session_key": "sk"}
    async with client.post(
        "/internal/logins/wechat-miniprogram", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        result = await resp.json()
        assert resp.status == 200, result
    return str(result["token"]["access_token"])


async def live(client, token: str) -> bool:
    async with transaction(client.app[PG_POOL]) as conn:
        return await inspect_token(conn, client.app[SIGNER], token, "access") is not None


class TestEncryptionAtRest:
    async def test_keys_are_encrypted_with_a_certificate(self, client, conn):
        """The stored key is AES-GCM ciphertext (no PEM in clear) that the master key opens to the signing key."""
        row = await conn.fetchrow("SELECT * FROM signing_keys")
        assert row["private_key_pem"] is None
        assert b"PRIVATE KEY" not in row["private_key_enc"]
        assert row["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
        pem = MasterKey(MASTER).open(row["private_key_enc"], row["kid"])
        opened = load_private_key(row["kid"], pem)
        assert opened.public_key().public_numbers() == client.app[SIGNER].current["RS256"].public_key.public_numbers()

    async def test_clear_key_gets_encrypted(self, pg_url):
        """A key stored in clear (before a master key existed) is encrypted in place at the next start, and kept."""
        async with TestClient(TestServer(create_store(pg_url, master=""))) as plain:
            kid = plain.app[SIGNER].current["RS256"].kid
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT private_key_pem IS NOT NULL FROM signing_keys") is True
            async with TestClient(TestServer(create_store(pg_url))) as sealed:
                assert sealed.app[SIGNER].current["RS256"].kid == kid
            row = await conn.fetchrow("SELECT * FROM signing_keys")
        finally:
            await conn.close()
        assert row is not None
        assert (row["kid"], row["private_key_pem"]) == (kid, None)
        assert MasterKey(MASTER).open(row["private_key_enc"], kid).startswith(b"-----BEGIN PRIVATE KEY-----")

    @pytest.mark.parametrize(
        ("master", "error", "message"),
        [("", ConfigError, "no master key is set"), ("w" * 40, WrongMasterKey, "cannot be decrypted")],
    )
    async def test_missing_or_wrong_master_key_refuses_to_start(self, client, pg_url, master, error, message):
        """With encrypted keys in the database, a store without the right master key does not start."""
        other = TestClient(TestServer(create_store(pg_url, master=master)))
        with pytest.raises(error, match=message):
            await other.start_server()
        await other.close()

    def test_process_exits_with_a_clear_message(self, pg_url):
        """``python -m user_store`` given the wrong master key exits 2 with one line saying so, no traceback."""
        asyncio.run(self._seal_a_key(pg_url))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MASTER_KEY")},
            "DATABASE_URL": pg_url,
            "INTERNAL_TOKEN": TOKEN,
            "USER_STORE_PORT": str(free_port()),
            "MASTER_KEY": "w" * 40,
            "LOG_FORMAT": "json",
        }
        out = subprocess.run(
            [sys.executable, "-m", "user_store"], cwd=ROOT, env=env, capture_output=True, timeout=60, text=True
        )
        assert out.returncode == 2, out.stderr
        assert "cannot be decrypted" in out.stderr
        assert "Traceback" not in out.stderr

    @staticmethod
    async def _seal_a_key(pg_url: str) -> None:
        async with TestClient(TestServer(create_store(pg_url))):
            pass


class TestMasterKeyConfig:
    def test_file_and_value(self, tmp_path: Path):
        """The master key comes from MASTER_KEY or MASTER_KEY_FILE; both, an empty file or a short key is refused."""
        path = tmp_path / "master.key"
        path.write_text(MASTER + "\n")
        assert load_master_key("", str(path)) is not None
        assert load_master_key("", "") is None
        for value, file, message in [
            (MASTER, str(path), "not both"),
            ("short", "", "at least 32"),
            ("", str(tmp_path / "missing"), "cannot be read"),
        ]:
            with pytest.raises(ConfigError, match=message):
                load_master_key(value, file)
        path.write_text("\n")
        with pytest.raises(ConfigError, match="is empty"):
            load_master_key("", str(path))

    def test_generated_once_owner_only(self, tmp_path: Path):
        """The runner's generated master key file is 0600 and never overwritten."""
        path = tmp_path / "state" / "master.key"
        ensure_master_key_file(path)
        first = path.read_text()
        ensure_master_key_file(path)
        assert path.read_text() == first
        assert len(first.strip()) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


class TestRotation:
    async def test_new_key_is_published_before_it_signs(self, client, conn, shop):
        """After rotate-keys the new key is in the JWKS at once, while tokens are still signed with the old one."""
        old = client.app[SIGNER].current["RS256"].kid
        [info] = await keyring.rotate_keys(conn, MasterKey(MASTER), activate_in=600)
        assert info.status == "pending"
        await eventually(_has_kid(client, info.kid), 5, "the reload")
        assert client.app[SIGNER].current["RS256"].kid == old
        assert kid_of(await mint(client, shop)) == old
        assert {key["kid"] for key in client.app[SIGNER].jwks()["keys"]} == {old, info.kid}

    async def test_activation_and_both_keys_verify(self, client, conn, shop):
        """Once active the new key signs; tokens of the old and of the new key are both live."""
        old_token = await mint(client, shop)
        [info] = await keyring.rotate_keys(conn, MasterKey(MASTER), activate_in=0.5)
        await eventually(_current_is(client, info.kid), 5, "the activation")
        new_token = await mint(client, shop)
        assert (kid_of(old_token), kid_of(new_token)) != (info.kid, info.kid)
        assert kid_of(new_token) == info.kid
        assert await live(client, old_token) and await live(client, new_token)
        statuses = {key.kid: key.status for key in await keyring.list_keys(conn)}
        assert statuses == {kid_of(old_token): "superseded", info.kid: "current"}

    async def test_old_key_stays_until_its_last_token_expires(self, client, conn, shop):
        """A superseded key verifies until its successor's activation plus the longest token lifetime plus a grace
        (168 h here); past that moment it leaves the JWKS."""
        old = client.app[SIGNER].current["RS256"].kid
        [info] = await keyring.rotate_keys(conn, MasterKey(MASTER), activate_in=0)
        row = await conn.fetchrow("SELECT verify_until FROM signing_keys WHERE kid = $1", old)
        assert row["verify_until"] == info.activates_at + timedelta(hours=168) + keyring.SUPERSEDE_GRACE
        await conn.execute("UPDATE signing_keys SET verify_until = now() - interval '1 second' WHERE kid = $1", old)
        await eventually(_lacks_kid(client, old), 5, "dropping the expired key")
        assert {key.kid: key.status for key in await keyring.list_keys(conn)}[old] == "expired"

    async def test_retire(self, client, conn, shop):
        """The current key cannot be retired; a superseded one can, and its tokens stop being live."""
        old_token = await mint(client, shop)
        old = kid_of(old_token)
        with pytest.raises(BadRequest, match="current RS256 signing key"):
            await keyring.retire_key(conn, old)
        [info] = await keyring.rotate_keys(conn, MasterKey(MASTER), activate_in=0)
        await eventually(_current_is(client, info.kid), 5, "the activation")
        assert (await keyring.retire_key(conn, old)).status == "retired"
        await eventually(_lacks_kid(client, old), 5, "the retirement")
        assert not await live(client, old_token)
        assert await live(client, await mint(client, shop))

    async def test_rotation_needs_the_right_master_key(self, client, conn):
        """rotate-keys refuses to add a key the running stores could not open."""
        with pytest.raises(ConfigError, match="no master key"):
            await keyring.rotate_keys(conn, None)
        with pytest.raises(WrongMasterKey):
            await keyring.rotate_keys(conn, MasterKey("w" * 40))
        assert await conn.fetchval("SELECT count(*) FROM signing_keys") == 1

    async def test_reload_tells_the_verifiers(self, pg_url, redis_url, redis_client, key_prefix):
        """A store that sees a key change publishes SigningKeysChanged for the verifiers."""
        keys = RedisKeys(key_prefix)
        pubsub = redis_client.pubsub()
        await pubsub.subscribe(keys.token_events)
        try:
            async with TestClient(TestServer(create_store(pg_url, redis_url=redis_url, key_prefix=key_prefix))):
                conn = await asyncpg.connect(pg_url)
                try:
                    [info] = await keyring.rotate_keys(conn, MasterKey(MASTER), activate_in=60)
                finally:
                    await conn.close()
                event = None
                for _ in range(50):
                    message = await pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        event = token_event_decoder.decode(message["data"])
                        break
        finally:
            await pubsub.aclose()
        assert isinstance(event, SigningKeysChanged)
        assert info.kid in event.kids


class TestAlgorithms:
    async def test_es256_application_has_its_own_ring(self, client, conn, shop, es_shop):
        """The first ES256 application makes an ES256 key (sealed, current at once); its logins get ES256 tokens
        whose kid is an EC P-256 key of the JWKS, while the RS256 application's tokens stay RS256. Both are live."""
        keys = {key.algorithm: key for key in await keyring.list_keys(conn)}
        assert {alg: (key.status, key.encrypted) for alg, key in keys.items()} == {
            "RS256": ("current", True),
            "ES256": ("current", True),
        }
        await eventually(_current_is(client, keys["ES256"].kid, "ES256"), 5, "the reload")
        es_token, rs_token = await mint(client, es_shop, appid=ES256_APPID), await mint(client, shop)
        assert jwt.get_unverified_header(es_token) == {"alg": "ES256", "kid": keys["ES256"].kid, "typ": "JWT"}
        assert jwt.get_unverified_header(rs_token)["alg"] == "RS256"
        [jwk] = [key for key in client.app[SIGNER].jwks()["keys"] if key["kid"] == kid_of(es_token)]
        assert set(jwk) == {"kty", "kid", "alg", "use", "crv", "x", "y", "x5c"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256")
        claims = jwt.decode(es_token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=es_shop.client_id)
        assert claims["tokenType"] == "access-token"
        assert await live(client, es_token) and await live(client, rs_token)
        assert await keyring.ensure_key(conn, MasterKey(MASTER), "ES256") is None

    async def test_rotation_per_algorithm(self, client, conn, shop, es_shop):
        """Rotating ES256 leaves the RS256 ring alone (its key stays current, with no expiry); without algorithms
        a rotation makes one key per algorithm in use."""
        before = {key.algorithm: key.kid for key in await keyring.list_keys(conn)}
        [info] = await keyring.rotate_keys(conn, MasterKey(MASTER), ["ES256"], activate_in=0)
        assert (info.algorithm, info.status) == ("ES256", "current")
        statuses = {key.kid: key.status for key in await keyring.list_keys(conn)}
        assert statuses == {before["RS256"]: "current", before["ES256"]: "superseded", info.kid: "current"}
        expiry = dict(await conn.fetch("SELECT kid, verify_until FROM signing_keys"))
        assert expiry[before["RS256"]] is None
        assert expiry[before["ES256"]] == info.activates_at + timedelta(hours=168) + keyring.SUPERSEDE_GRACE
        await eventually(_current_is(client, info.kid, "ES256"), 5, "the activation")
        assert client.app[SIGNER].current["RS256"].kid == before["RS256"]
        assert kid_of(await mint(client, es_shop, appid=ES256_APPID)) == info.kid

        both = await keyring.rotate_keys(conn, MasterKey(MASTER), activate_in=600)
        assert [(key.algorithm, key.status) for key in both] == [("RS256", "pending"), ("ES256", "pending")]

    async def test_retire_refuses_the_current_key_of_its_algorithm(self, client, conn, es_shop):
        """Each algorithm's current key is protected from retire-key, and the message says how to rotate it."""
        [es] = [key for key in await keyring.list_keys(conn) if key.algorithm == "ES256"]
        with pytest.raises(BadRequest, match="current ES256 signing key; run rotate-keys --alg ES256"):
            await keyring.retire_key(conn, es.kid)
        [new] = await keyring.rotate_keys(conn, MasterKey(MASTER), ["ES256"], activate_in=0)
        assert (await keyring.retire_key(conn, es.kid)).status == "retired"
        assert {key.kid: key.status for key in await keyring.list_keys(conn)}[new.kid] == "current"

    async def test_an_application_changes_algorithm(self, client, conn, shop):
        """set_signing_alg makes the ES256 ring when it is the first, and the application's next tokens are ES256;
        its RS256 tokens stay live."""
        old = await mint(client, shop)
        app = await admin.set_signing_alg(conn, "shop", "ES256", master=MasterKey(MASTER))
        assert app.signing_alg == "ES256"
        [es] = [key for key in await keyring.list_keys(conn) if key.algorithm == "ES256"]
        await eventually(_current_is(client, es.kid, "ES256"), 5, "the reload")
        new = await mint(client, shop, "o-2")
        assert (jwt.get_unverified_header(new)["alg"], kid_of(new)) == ("ES256", es.kid)
        assert await live(client, old) and await live(client, new)
        with pytest.raises(BadRequest, match="RS256 or ES256"):
            await admin.set_signing_alg(conn, "shop", "HS256")

    async def test_demo_follows_default_signing_alg(self, pg_url, tmp_path: Path):
        """The demo seed signs the demo application with DEFAULT_SIGNING_ALG, switching it at a start with another
        value; demo.json's certificate is then that algorithm's key's."""
        master = MasterKey(MASTER)
        es = await seed_demo(pg_url, tmp_path, "http://gw.test", "http://sb.test", master=master, signing_alg="ES256")
        from_cert = x509.load_pem_x509_certificate(es.certificate.encode()).public_key()
        assert isinstance(from_cert, ec.EllipticCurvePublicKey) and es.signing_alg == "ES256"
        rs = await seed_demo(pg_url, tmp_path, "http://gw.test", "http://sb.test", master=master)
        from_cert = x509.load_pem_x509_certificate(rs.certificate.encode()).public_key()
        assert isinstance(from_cert, rsa.RSAPublicKey) and rs.client_id == es.client_id
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT signing_alg FROM applications WHERE name = 'demo-app'") == "RS256"
            assert sorted(await conn.fetchval("SELECT array_agg(algorithm) FROM signing_keys")) == ["ES256", "RS256"]
        finally:
            await conn.close()


class TestEndToEnd:
    async def test_rotation_and_retirement_with_live_tokens(self, stack: Stack, redis_url):
        """Through the admin CLI on a running stack: rotate-keys, tokens of both keys verify (introspection, our
        verifier, PyJWKClient), then retire-key makes the old key's tokens fail and leaves the new ones live."""
        master_file = Path(stack.env["STATE_DIR"]) / "master.key"
        assert stat.S_IMODE(master_file.stat().st_mode) == 0o600
        async with aiohttp.ClientSession() as session:
            old_token = (await stack_login(session, stack, "o-rotate-1"))["access_token"]
            old = kid_of(old_token)
            [rotated] = stack.admin("rotate-keys", "--alg", "RS256", "--activate-in", "3")
            new = rotated["kid"]
            assert rotated["status"] == "pending" and rotated["encrypted"] is True
            await eventually(_jwks_has(session, stack, new), 10, "the new key in the JWKS")
            new_token = await _token_with_kid(session, stack, new)

            assert (await introspect(session, stack, old_token))["active"] is True
            assert (await introspect(session, stack, new_token))["active"] is True
            redis = aioredis.Redis.from_url(redis_url)
            verifier = stack_verifier(session, stack, redis)
            async with verifier:
                await verifier.verify(old_token)
                await verifier.verify(new_token)
                for token in (old_token, new_token):
                    await asyncio.to_thread(_pyjwk_verify, stack, token)

                listed = {key["kid"]: key["status"] for key in stack.admin("list-keys")}
                assert (listed[old], listed[new]) == ("superseded", "current")
                with pytest.raises(RuntimeError, match="current RS256 signing key"):
                    stack.admin("retire-key", "--kid", new)
                assert stack.admin("retire-key", "--kid", old)["status"] == "retired"

                await eventually(_inactive(session, stack, old_token), 10, "introspection failing the old token")
                await eventually(refuses(verifier, old_token), 10, "the verifier failing the old token")
                assert (await introspect(session, stack, new_token))["active"] is True
                await verifier.verify(new_token)
            await redis.aclose()
        async with aiohttp.ClientSession() as session:
            async with session.get(stack.gateway + "/.well-known/jwks") as resp:
                assert old not in {key["kid"] for key in (await resp.json())["keys"]}


class TestAlgorithmsEndToEnd:
    async def test_cli_per_algorithm(self, stack: Stack):
        """Through the admin CLI: create-app --alg ES256 starts the ES256 ring, rotate-keys --alg ES256 rotates it
        alone, rotate-keys with no --alg rotates both rings, set-alg moves an application; tokens follow."""
        app = make_app(stack, "cli-es256", alg="ES256")
        keys = {key["algorithm"]: key for key in stack.admin("list-keys") if key["status"] == "current"}
        assert set(keys) == {"RS256", "ES256"}
        [rotated] = stack.admin("rotate-keys", "--alg", "ES256", "--activate-in", "0")
        assert (rotated["algorithm"], rotated["status"]) == ("ES256", "current")
        statuses = {key["kid"]: key["status"] for key in stack.admin("list-keys")}
        assert (statuses[keys["RS256"]["kid"]], statuses[keys["ES256"]["kid"]]) == ("current", "superseded")
        async with aiohttp.ClientSession() as session:
            token = await _token_with_kid(session, stack, rotated["kid"], client_id=app["clientId"], appid=app["appid"])
            assert jwt.get_unverified_header(token)["alg"] == "ES256"
            both = stack.admin("rotate-keys", "--activate-in", "600")
            assert sorted(key["algorithm"] for key in both) == ["ES256", "RS256"]
            moved = stack.admin("set-alg", "--app", app["name"], "--alg", "RS256")
            assert moved["tokenSigningMethod"] == "RS256"
            login = await stack_login(session, stack, "o-cli-moved", client_id=app["clientId"], appid=app["appid"])
            assert jwt.get_unverified_header(login["access_token"])["alg"] == "RS256"
            assert (await introspect(session, stack, token, auth=basic(app["clientId"], app["clientSecret"])))[
                "active"
            ] is True
        with pytest.raises(RuntimeError, match="invalid choice: 'HS256'"):
            stack.admin("create-app", "--org", "demo", "--name", "cli-hs256", "--alg", "HS256")


def _has_kid(client, kid: str):
    async def check() -> bool:
        return kid in client.app[SIGNER].public_keys()

    return check


def _lacks_kid(client, kid: str):
    async def check() -> bool:
        return kid not in client.app[SIGNER].public_keys()

    return check


def _current_is(client, kid: str, alg: str = "RS256"):
    async def check() -> bool:
        current = client.app[SIGNER].current.get(alg)
        return current is not None and bool(current.kid == kid)

    return check


def _jwks_has(session: aiohttp.ClientSession, stack: Stack, kid: str):
    async def check() -> bool:
        async with session.get(stack.gateway + "/.well-known/jwks") as resp:
            return kid in {key["kid"] for key in (await resp.json())["keys"]}

    return check


async def _token_with_kid(
    session: aiohttp.ClientSession, stack: Stack, kid: str, *, client_id: str = "", appid: str = ""
) -> str:
    """Log in (to the demo application, or to ``client_id`` with ``appid``) until the user store signs with ``kid``
    (it does once the key is active and reloaded)."""
    for attempt in range(100):
        openid = f"o-rotate-{kid}-{attempt + 2}"
        token = str((await stack_login(session, stack, openid, client_id=client_id, appid=appid))["access_token"])
        if kid_of(token) == kid:
            return token
        await asyncio.sleep(0.2)
    raise AssertionError(f"no token was signed with {kid}")


def _inactive(session: aiohttp.ClientSession, stack: Stack, token: str):
    async def check() -> bool:
        return (await introspect(session, stack, token)) == {"active": False}

    return check


def _pyjwk_verify(stack: Stack, token: str) -> None:
    key = jwt.PyJWKClient(stack.gateway + "/.well-known/jwks").get_signing_key_from_jwt(token)
    jwt.decode(token, key.key, algorithms=["RS256"], audience=stack.demo["clientId"], issuer=stack.gateway)
