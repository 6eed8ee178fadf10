"""The user store's internal HTTP API, against a real PostgreSQL database per test."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import asyncpg
import jwt
import msgspec
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from shared.config import Secret, UserStoreConfig
from tests.conftest import SHOP_APPID as APPID
from user_store import admin
from user_store.app import create_app
from user_store.appkeys import PG_POOL, SIGNER

TOKEN = "t" * 32
ISSUER = "http://issuer.test"
LOGIN_PATH = "/internal/logins/wechat-miniprogram"


@pytest.fixture(name="config")
def _config(pg_url: str) -> UserStoreConfig:
    return UserStoreConfig(internal_token=Secret(TOKEN), database_url=Secret(pg_url), issuer=ISSUER)


@pytest.fixture(name="client")
async def _client(config: UserStoreConfig):
    async with TestClient(TestServer(create_app(config))) as client:
        yield client


async def call(
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    *,
    json: Any = None,
    status: int = 200,
    token: str | None = TOKEN,
) -> Any:
    """Make a request, assert its status (showing the body when it differs) and return the decoded JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with client.request(method, path, json=json, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return msgspec.json.decode(text)


async def login(
    client: TestClient[web.Request, web.Application], app: admin.Application, *, status: int = 200, **fields: Any
) -> Any:
    body = {"client_id": app.client_id, "appid": APPID, "openid": "openid-1", "session_key": "sk-secret-1"}
    return await call(client, "POST", LOGIN_PATH, json={**body, **fields}, status=status)


async def count(conn: asyncpg.Connection, table: str) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM {table}")  # type: ignore[no-any-return]


class TestAuth:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/internal/applications/abc"),
            ("GET", "/internal/applications/abc/wechat-miniprogram"),
            ("POST", LOGIN_PATH),
            ("GET", "/internal/no-such-route"),
        ],
    )
    async def test_internal_routes_require_the_token(self, client, method, path):
        """Without the bearer token every /internal/* route answers 401 invalid_token, even unknown ones (but
        introspection, which takes client credentials instead: tests/test_introspection.py)."""
        body = await call(client, method, path, token=None, status=401)
        assert body["error"] == "invalid_token"
        assert body["error_description"]

    async def test_wrong_token_is_refused(self, client):
        """A token that differs from the configured one is refused like a missing one."""
        body = await call(client, "GET", "/internal/applications/abc", token="x" * 32, status=401)
        assert body["error"] == "invalid_token"

    async def test_right_token_passes(self, client):
        """With the right token the request reaches the route (here: an unknown client)."""
        body = await call(client, "GET", "/internal/applications/abc", status=401)
        assert body["error"] == "invalid_client"


class TestHealth:
    async def test_healthz_needs_no_token(self, client):
        """/healthz answers 200 {"status": "ok"} without authentication."""
        assert await call(client, "GET", "/healthz", token=None) == {"status": "ok"}

    async def test_readyz_when_the_database_answers(self, client):
        """/readyz answers 200 while SELECT 1 succeeds."""
        assert await call(client, "GET", "/readyz", token=None) == {"status": "ok"}

    async def test_readyz_when_the_database_does_not_answer(self, pg_url):
        """/readyz answers 503 with Retry-After when no connection answers within a second."""
        config = UserStoreConfig(
            internal_token=Secret(TOKEN), database_url=Secret(pg_url), pg_pool_min=1, pg_pool_max=1
        )
        async with TestClient(TestServer(create_app(config))) as client:
            async with client.app[PG_POOL].acquire():
                async with client.get("/readyz") as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "1"
                    assert (await resp.json())["error"] == "temporarily_unavailable"


class TestApplications:
    async def test_unknown_client(self, client, shop):
        """An unknown client_id is 401 invalid_client "client_id is invalid" on both lookups."""
        for path in ("/internal/applications/0000", "/internal/applications/0000/wechat-miniprogram"):
            body = await call(client, "GET", path, status=401)
            assert body == {"error": "invalid_client", "error_description": "client_id is invalid"}

    async def test_application_info(self, client, shop):
        """The info names the application, its organization, sign-up flag and first mini-program appid."""
        body = await call(client, "GET", f"/internal/applications/{shop.client_id}")
        assert body == {
            "client_id": shop.client_id,
            "name": "shop",
            "organization": "acme",
            "enable_sign_up": True,
            "miniprogram_appid": APPID,
            "content_safety": False,
        }

    async def test_application_without_provider(self, client, conn, shop):
        """An application without a mini-program provider has miniprogram_appid "" and no provider."""
        bare = await admin.create_application(conn, "acme", "bare")
        body = await call(client, "GET", f"/internal/applications/{bare.client_id}")
        assert body["miniprogram_appid"] == ""
        body = await call(client, "GET", f"/internal/applications/{bare.client_id}/wechat-miniprogram", status=401)
        assert body == {
            "error": "invalid_client",
            "error_description": "the application does not support wechat mini program",
        }

    async def test_provider_lookup_takes_the_first_by_position(self, client, conn, shop):
        """The provider lookup returns the credentials of the first attached mini-program provider."""
        await admin.attach_miniprogram_provider(conn, "shop", "wx-second", "other-secret")
        body = await call(client, "GET", f"/internal/applications/{shop.client_id}/wechat-miniprogram")
        assert body == {
            "client_id": shop.client_id,
            "provider": f"wechat-mp-{APPID}",
            "appid": APPID,
            "secret": "wx-secret",
            "content_safety": False,
        }


class TestFirstLogin:
    async def test_creates_the_user(self, client, conn, shop):
        """A first login creates a user with Casdoor's fields and an identity holding the session key."""
        body = await login(client, shop, username="alice", avatar="https://img.test/a.png", unionid="u-1")
        assert body["created"] is True
        assert body["user_name"] == "alice"
        user = await conn.fetchrow("SELECT * FROM users WHERE id = $1::uuid", body["user_id"])
        assert user["name"] == "alice"
        assert user["display_name"] == "alice"
        assert user["avatar"] == "https://img.test/a.png"
        assert user["signup_application"] == "shop"
        assert user["type"] == "normal-user"
        assert msgspec.json.decode(user["properties"]) == {"wechatOpenId": "openid-1", "wechatUnionId": "u-1"}
        identity = await conn.fetchrow("SELECT * FROM wechat_identities")
        assert (identity["appid"], identity["openid"], identity["unionid"]) == (APPID, "openid-1", "u-1")
        assert identity["session_key"] == "sk-secret-1"

    async def test_default_avatar(self, client, conn, shop):
        """A user created without an avatar gets the organization's default avatar."""
        await conn.execute("UPDATE organizations SET default_avatar = 'https://img.test/default.png'")
        await login(client, shop)
        assert await conn.fetchval("SELECT avatar FROM users") == "https://img.test/default.png"

    async def test_chinese_nickname_falls_back_to_openid(self, client, conn, shop):
        """A username failing Casdoor's rule gives name wechat-<openid>, the nickname becoming display_name."""
        body = await login(client, shop, username="小明")
        assert body["user_name"] == "wechat-openid-1"
        assert await conn.fetchval("SELECT display_name FROM users") == "小明"

    async def test_taken_username_falls_back_to_openid(self, client, conn, shop):
        """A valid username already used in the organization gives name wechat-<openid>."""
        await login(client, shop, username="bob", openid="first")
        body = await login(client, shop, username="bob", openid="second")
        assert body["created"] is True
        assert body["user_name"] == "wechat-second"

    async def test_taken_fallback_gets_a_suffix(self, client, conn, shop):
        """When wechat-<openid> is taken as well, a short random suffix makes the name unique."""
        await login(client, shop, username="wechat-x", openid="first")
        body = await login(client, shop, username="wechat-x", openid="x")
        assert body["user_name"].startswith("wechat-x-")
        assert len(body["user_name"]) == len("wechat-x-") + 6

    async def test_sign_up_disabled(self, client, conn, shop):
        """With sign-up disabled a new person gets 400 invalid_grant and no user row is written."""
        await conn.execute("UPDATE applications SET enable_sign_up = false")
        body = await login(client, shop, status=400)
        assert body == {
            "error": "invalid_grant",
            "error_description": "the application does not allow to sign up new account",
        }
        assert await count(conn, "users") == 0

    @pytest.mark.parametrize(
        "avatar", ["javascript:alert(1)", "ftp://img.test/a.png", "https://", "https://a.test/" + "x" * 1024]
    )
    async def test_invalid_avatar(self, client, conn, shop, avatar):
        """An avatar that is not an https URL on a public host of at most 1024 characters is 400 and creates nothing."""
        body = await login(client, shop, avatar=avatar, status=400)
        assert body["error"] == "invalid_request"
        assert await count(conn, "users") == 0

    @pytest.mark.parametrize(
        "fields", [{"openid": ""}, {"openid": "o" * 129}, {"username": "u" * 256}, {"username": "a\x00b"}]
    )
    async def test_invalid_identity_fields(self, client, conn, shop, fields):
        """An empty or oversized openid and an oversized or unprintable username are 400 invalid_request."""
        body = await login(client, shop, status=400, **fields)
        assert body["error"] == "invalid_request"
        assert await count(conn, "users") == 0

    async def test_unknown_client(self, client, conn, shop):
        """A login for an unknown client_id is 401 invalid_client and creates nothing."""
        body = await login(client, shop, client_id="f" * 20, status=401)
        assert body["error_description"] == "client_id is invalid"
        assert await count(conn, "users") == 0

    async def test_appid_not_attached(self, client, conn, shop):
        """A login whose appid is not one of the application's providers is refused."""
        body = await login(client, shop, appid="wx-other", status=401)
        assert body["error"] == "invalid_client"
        assert await count(conn, "users") == 0


class TestReturningLogin:
    async def test_keeps_the_user(self, client, conn, shop):
        """A second login of one openid returns the same user, created=False, and stores the newest session key."""
        first = await login(client, shop)
        again = await login(client, shop, session_key="sk-secret-2")
        assert again["user_id"] == first["user_id"]
        assert again["created"] is False
        assert await count(conn, "users") == 1
        assert await conn.fetchval("SELECT session_key FROM wechat_identities") == "sk-secret-2"

    async def test_updates_the_profile(self, client, conn, shop):
        """A non-empty username and avatar update display_name and avatar, never the user name."""
        first = await login(client, shop, username="carol")
        await login(client, shop, username="Carol C", avatar="https://img.test/c.png")
        user = await conn.fetchrow("SELECT * FROM users")
        assert (user["name"], user["display_name"], user["avatar"]) == (
            first["user_name"],
            "Carol C",
            "https://img.test/c.png",
        )

    async def test_empty_fields_keep_the_profile(self, client, conn, shop):
        """Empty username and avatar leave the stored profile alone."""
        await login(client, shop, username="dave", avatar="https://img.test/d.png")
        await login(client, shop)
        user = await conn.fetchrow("SELECT * FROM users")
        assert (user["display_name"], user["avatar"]) == ("dave", "https://img.test/d.png")

    async def test_backfills_the_unionid(self, client, conn, shop):
        """A unionid seen for the first time on a returning login is stored on the identity."""
        await login(client, shop)
        await login(client, shop, unionid="u-late")
        assert await conn.fetchval("SELECT unionid FROM wechat_identities") == "u-late"

    async def test_forbidden_user(self, client, conn, shop):
        """A forbidden or deleted user gets 400 invalid_grant and no token."""
        await login(client, shop)
        for column in ("is_forbidden", "is_deleted"):
            await conn.execute(
                "UPDATE users SET is_forbidden = ($1 = 'is_forbidden'), is_deleted = ($1 = 'is_deleted')", column
            )
            body = await login(client, shop, status=400)
            assert body == {"error": "invalid_grant", "error_description": "the user is forbidden to sign in"}
        assert await count(conn, "tokens") == 1

    async def test_sign_up_disabled_still_lets_users_in(self, client, conn, shop):
        """Disabling sign-up blocks new people only; a known openid still logs in."""
        first = await login(client, shop)
        await conn.execute("UPDATE applications SET enable_sign_up = false")
        assert (await login(client, shop))["user_id"] == first["user_id"]


class TestUnionid:
    async def test_links_two_miniprograms_of_one_organization(self, client, conn, shop):
        """Two mini programs of one organization giving the same unionid resolve to one user."""
        other = await admin.create_application(conn, "acme", "blog")
        await admin.attach_miniprogram_provider(conn, "blog", "wx-blog", "s")
        first = await login(client, shop, openid="shop-openid", unionid="u-1")
        second = await login(client, other, appid="wx-blog", openid="blog-openid", unionid="u-1")
        assert second["user_id"] == first["user_id"]
        assert second["created"] is False
        assert await count(conn, "users") == 1
        assert await count(conn, "wechat_identities") == 2

    async def test_is_scoped_per_organization(self, client, conn, shop):
        """The same unionid in another organization is another user."""
        await admin.create_organization(conn, "globex")
        other = await admin.create_application(conn, "globex", "gx")
        await admin.attach_miniprogram_provider(conn, "gx", "wx-gx", "s")
        first = await login(client, shop, unionid="u-1")
        second = await login(client, other, appid="wx-gx", unionid="u-1")
        assert second["user_id"] != first["user_id"]
        assert second["created"] is True


class TestConcurrency:
    async def test_fifty_first_logins_make_one_user(self, client, conn, shop):
        """50 simultaneous first logins of one openid create exactly one user and identity, and 50 token rows."""
        results = await asyncio.gather(*(login(client, shop, unionid="u-1") for _ in range(50)))
        assert len({r["user_id"] for r in results}) == 1
        assert sum(r["created"] for r in results) == 1
        assert await count(conn, "users") == 1
        assert await count(conn, "wechat_identities") == 1
        assert await count(conn, "tokens") == 50


class TestTokens:
    async def test_access_token_verifies(self, client, shop):
        """The access token is RS256 with the signer's kid, iss from config, aud [client_id] and Casdoor's claims."""
        body = await login(client, shop, username="erin", avatar="https://img.test/e.png")
        token = body["token"]
        signer = client.app[SIGNER]
        header = jwt.get_unverified_header(token["access_token"])
        assert header["kid"] == signer.current["RS256"].kid
        public = signer.public_keys()[header["kid"]]
        claims = jwt.decode(token["access_token"], public, algorithms=["RS256"], audience=shop.client_id, issuer=ISSUER)
        assert claims["aud"] == [shop.client_id]
        assert claims["sub"] == body["user_id"]
        assert claims["exp"] - claims["iat"] == token["expires_in"] == 168 * 3600
        assert claims["nbf"] == claims["iat"]
        assert (claims["tokenType"], claims["azp"], claims["scope"]) == ("access-token", shop.client_id, "profile")
        assert (claims["owner"], claims["name"], claims["displayName"]) == ("acme", "erin", "erin")
        assert claims["avatar"] == "https://img.test/e.png"
        assert token["id_token"] == token["access_token"]
        assert (token["token_type"], token["scope"]) == ("Bearer", "profile")

    async def test_refresh_token(self, client, conn, shop):
        """The refresh token is opaque (no signature to pay for) and lives refresh_expire_in_hours when set."""
        await conn.execute("UPDATE applications SET expire_in_hours = 2, refresh_expire_in_hours = 24")
        token = (await login(client, shop))["token"]
        assert re.fullmatch(r"mdr_[A-Za-z0-9_-]{43}", token["refresh_token"])
        row = await conn.fetchrow("SELECT expires_at, refresh_expires_at FROM tokens")
        assert (row["refresh_expires_at"] - row["expires_at"]).total_seconds() == 22 * 3600
        assert token["expires_in"] == 2 * 3600

    async def test_token_row_holds_hashes_only(self, client, conn, shop):
        """The token row stores sha256 hashes of both JWTs, the jti as its id, and never a raw token."""
        body = await login(client, shop)
        token = body["token"]
        row = await conn.fetchrow("SELECT * FROM tokens")
        assert row["access_hash"] == hashlib.sha256(token["access_token"].encode()).digest()
        assert row["refresh_hash"] == hashlib.sha256(token["refresh_token"].encode()).digest()
        assert str(row["id"]) == jwt.decode(token["access_token"], options={"verify_signature": False})["jti"]
        assert str(row["user_id"]) == body["user_id"]
        stored = " ".join(str(value) for value in row.values())
        assert token["access_token"] not in stored
        assert token["refresh_token"] not in stored

    async def test_session_key_never_leaves(self, client, shop):
        """The WeChat session key appears in no response, token claim included."""
        async with client.post(
            LOGIN_PATH,
            json={"client_id": shop.client_id, "appid": APPID, "openid": "o", "session_key": "sk-very-secret"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            text = await resp.text()
            assert resp.status == 200, text
        token = msgspec.json.decode(text)["token"]
        claims = jwt.decode(token["access_token"], options={"verify_signature": False})  # the refresh one is opaque
        assert "sk-very-secret" not in text
        assert "sk-very-secret" not in str(claims)


class TestRequests:
    async def test_malformed_json(self, client, shop):
        """A body that is not JSON is 400 invalid_request."""
        async with client.post(
            LOGIN_PATH,
            data=b"{not json",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "invalid_request"

    async def test_wrong_shape_names_the_field(self, client, shop):
        """A body of the wrong shape is 400 with msgspec's path-precise message."""
        body = await call(
            client,
            "POST",
            LOGIN_PATH,
            json={"client_id": "c", "appid": "a", "openid": 5, "session_key": "s"},
            status=400,
        )
        detail = "Expected `str`, got `int` - at `$.openid`"
        assert body == {
            "error": "invalid_request",
            "error_description": f"the body does not fit: {detail}",
            "message": "the body does not fit: {detail}",
            "params": {"detail": detail},
        }

    async def test_oversized_body(self, client, shop):
        """A body larger than max_body_bytes is 413 with an ErrorBody."""
        body = await call(client, "POST", LOGIN_PATH, json={"client_id": "x" * 70_000}, status=413)
        assert body["error"] == "invalid_request"

    async def test_oversized_chunked_body(self, client, shop):
        """A body without Content-Length is cut off at max_body_bytes too, with a 413 ErrorBody."""

        async def chunks():
            for _ in range(20):
                yield b"x" * 8192

        async with client.post(
            LOGIN_PATH,
            data=chunks(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "invalid_request"

    async def test_wrong_content_type(self, client, shop):
        """A body that is not declared application/json is 415."""
        async with client.post(LOGIN_PATH, data=b"a=b", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 415

    async def test_request_id_is_echoed_and_logged(self, client):
        """X-Request-Id is echoed, and the request ends with one canonical log line carrying it."""
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with client.get("/internal/applications/nope", headers={"X-Request-Id": "req-42"}) as resp:
                assert resp.headers["X-Request-Id"] == "req-42"
        lines = [entry for entry in logs if entry["event"] == "request"]
        assert len(lines) == 1
        assert lines[0]["request_id"] == "req-42"
        assert (lines[0]["status"], lines[0]["outcome"]) == (401, "invalid_token")
        assert lines[0]["duration_ms"] >= 0

    async def test_request_id_is_generated(self, client):
        """Without a usable X-Request-Id the response carries a generated one."""
        async with client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"}) as resp:
            assert len(resp.headers["X-Request-Id"]) == 32

    async def test_unknown_route_is_an_error_body(self, client):
        """Routing errors use the same ErrorBody shape as every other error."""
        body = await call(client, "GET", "/nowhere", status=404)
        assert body["error"] == "not_found"
