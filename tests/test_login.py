"""Mini-program login end to end: gateway → Redis stream → auth worker → WeChat sandbox → user store.

Every test talks to real processes over HTTP, as a mini program and its developer would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.oauth_helpers import claims_of, stack_login
from tests.stack import Stack


async def wx_login(session: aiohttp.ClientSession, stack: Stack, openid: str | None = None, **extra: str) -> str:
    """The sandbox's stand-in for wx.login(): a fresh one-time code."""
    body: dict[str, str] = {"appid": stack.demo["wechatAppId"], **extra}
    if openid:
        body["openid"] = openid
    async with session.post(stack.sandbox + "/sandbox/login", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["code"])


async def post_token(
    session: aiohttp.ClientSession, stack: Stack, status: int = 200, **kwargs: Any
) -> tuple[dict[str, Any], aiohttp.ClientResponse]:
    """POST to the token endpoint, assert the status, return the JSON body and the response."""
    async with session.post(stack.token_url, **kwargs) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, body
        return body, resp


async def fault(session: aiohttp.ClientSession, stack: Stack, **spec: Any) -> None:
    async with session.post(stack.sandbox + "/sandbox/faults", json=spec) as resp:
        assert resp.status == 200, await resp.text()


class TestLogin:
    async def test_new_user_gets_casdoor_token_response(self, session, stack, db):
        """A first login creates the user and answers Casdoor's snake_case token wrapper, without session_key."""
        body = await stack_login(session, stack, "o-new-user")
        assert set(body) == {"access_token", "id_token", "refresh_token", "token_type", "expires_in", "scope"}
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 168 * 3600
        assert body["id_token"] == body["access_token"]
        access = claims_of(body["access_token"])
        assert access["aud"] == [stack.demo["clientId"]]
        assert access["iss"] == stack.gateway
        assert access["tokenType"] == "access-token"
        assert body["refresh_token"].startswith("mdr_") and "." not in body["refresh_token"]  # opaque, not signed
        assert "session_key" not in str(body)
        row = await db.fetchrow("SELECT name FROM users WHERE id = $1", access["sub"])
        assert row["name"] == "wechat-o-new-user"

    async def test_returning_user_keeps_its_id(self, session, stack):
        """A second login of the same openid answers the same ``sub``."""
        first = claims_of((await stack_login(session, stack, "o-returning"))["access_token"])
        second = claims_of((await stack_login(session, stack, "o-returning"))["access_token"])
        assert first["sub"] == second["sub"]
        assert first["jti"] != second["jti"]

    async def test_profile_updates_on_login(self, session, stack, db):
        """``username`` and ``avatar`` name a new user and update a returning one's displayName and avatar."""
        first = claims_of((await stack_login(session, stack, "o-profile", username="alice"))["access_token"])
        assert first["name"] == "alice"
        await stack_login(session, stack, "o-profile", username="Alice 张", avatar="https://img.example/a.png")
        row = await db.fetchrow("SELECT name, display_name, avatar FROM users WHERE id = $1", first["sub"])
        assert (row["name"], row["display_name"], row["avatar"]) == ("alice", "Alice 张", "https://img.example/a.png")

    async def test_json_body_works_like_a_form(self, session, stack):
        """wx.request's default JSON body is read as Casdoor reads it."""
        code = await wx_login(session, stack, "o-json")
        payload = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        body, _ = await post_token(session, stack, json=payload)
        assert body["token_type"] == "Bearer"

    async def test_form_body_wins_over_query(self, session, stack):
        """As in Casdoor, a form field overrides the same query parameter."""
        code = await wx_login(session, stack, "o-precedence")
        body, _ = await post_token(
            session,
            stack,
            params={"client_id": "wrong", "code": "wrong"},
            data={"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code},
        )
        assert "access_token" in body

    async def test_fifty_concurrent_first_logins_make_one_user(self, session, stack, db):
        """50 simultaneous first logins of one openid all succeed and create exactly one user."""
        bodies = await asyncio.gather(*(stack_login(session, stack, "o-stampede") for _ in range(50)))
        subs = {claims_of(b["access_token"])["sub"] for b in bodies}
        assert len(subs) == 1
        count = await db.fetchval("SELECT count(*) FROM wechat_identities WHERE openid = 'o-stampede'")
        users = await db.fetchval("SELECT count(*) FROM users WHERE name = 'wechat-o-stampede'")
        assert (count, users) == (1, 1)


class TestBadRequests:
    async def test_unknown_client(self, session, stack):
        """An unknown client_id is 401 invalid_client with a WWW-Authenticate challenge."""
        code = await wx_login(session, stack, "o-x")
        body, resp = await post_token(
            session, stack, 401, data={"tag": "wechat_miniprogram", "client_id": "nope", "code": code}
        )
        assert body["error"] == "invalid_client"
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="OAuth2"'

    async def test_missing_client(self, session, stack):
        """No client_id at all is 401 invalid_client too."""
        body, _ = await post_token(session, stack, 401, data={"tag": "wechat_miniprogram", "code": "abc"})
        assert body == {"error": "invalid_client", "error_description": "client_id is missing"}

    @pytest.mark.parametrize("missing", ["tag", "code"])
    async def test_missing_tag_or_code(self, session, stack, missing):
        """Without ``tag`` or ``code`` the request is 400 invalid_request, naming what is missing."""
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": "abc"}
        del data[missing]
        body, _ = await post_token(session, stack, 400, data=data)
        assert body["error"] == "invalid_request"
        assert missing in body["error_description"]

    async def test_reused_code(self, session, stack):
        """A code works once; the second use is 400 invalid_grant."""
        code = await wx_login(session, stack, "o-reuse")
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        await post_token(session, stack, data=data)
        body, _ = await post_token(session, stack, 400, data=data)
        assert body["error"] == "invalid_grant"
        assert "40163" in body["error_description"]

    async def test_unknown_code(self, session, stack):
        """A code WeChat never issued is 400 invalid_grant."""
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": "never-issued"}
        body, _ = await post_token(session, stack, 400, data=data)
        assert body["error"] == "invalid_grant"

    async def test_malformed_json(self, session, stack):
        """A JSON content type with a broken body is 400 invalid_request saying so."""
        body, _ = await post_token(session, stack, 400, data=b'{"tag": ', headers={"Content-Type": "application/json"})
        assert body["error"] == "invalid_request"
        assert "JSON" in body["error_description"]

    async def test_wrong_content_type(self, session, stack):
        """A body that is neither a form nor JSON is 415, naming the accepted types."""
        body, _ = await post_token(session, stack, 415, data=b"tag=x", headers={"Content-Type": "text/plain"})
        assert "application/x-www-form-urlencoded" in body["error_description"]

    async def test_oversized_body(self, session, stack):
        """A body over the limit is 413 with an OAuth error body, not a bare HTML page."""
        big = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": "x" * 200_000}
        body, _ = await post_token(session, stack, 413, data=big)
        assert body["error"] == "invalid_request"

    async def test_unknown_route_is_json(self, session, stack):
        """Even a wrong path answers JSON."""
        async with session.get(stack.gateway + "/api/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"


class TestWechatFailures:
    async def test_system_busy_twice_then_success(self, session, stack):
        """WeChat's -1 is retried inside the deadline; the client just gets its token."""
        code = await wx_login(session, stack, "o-busy")
        await fault(session, stack, errcode=-1, count=2)
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        body, _ = await post_token(session, stack, data=data)
        assert "access_token" in body
        async with session.get(f"{stack.sandbox}/sandbox/codes/{code}") as resp:
            record = await resp.json()
        assert (record["presented"], record["exchanged"]) == (3, 1)

    async def test_http_5xx_is_retried(self, session, stack):
        """A 502 from WeChat is retried like -1."""
        code = await wx_login(session, stack, "o-5xx")
        await fault(session, stack, http_status=502, count=1)
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        body, _ = await post_token(session, stack, data=data)
        assert "access_token" in body

    async def test_wechat_down_is_503(self, session, stack):
        """When WeChat keeps failing, the client gets 503 temporarily_unavailable with Retry-After."""
        code = await wx_login(session, stack, "o-down")
        await fault(session, stack, errcode=-1, count=3)
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        body, resp = await post_token(session, stack, 503, data=data)
        assert body["error"] == "temporarily_unavailable"
        assert resp.headers["Retry-After"] == "1"

    async def test_rate_limited_user(self, session, stack):
        """WeChat's 45011 (too many logins for one user) is 429 with Retry-After."""
        code = await wx_login(session, stack, "o-hasty")
        await fault(session, stack, errcode=45011, errmsg="api minute-quota reach limit", count=1)
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        body, resp = await post_token(session, stack, 429, data=data)
        assert "45011" in body["error_description"]
        assert resp.headers["Retry-After"] == "60"


class TestApplications:
    async def test_sign_up_disabled(self, session, stack, db):
        """An application without sign-up refuses new users with invalid_grant and writes nothing."""
        app = stack.admin("create-app", "--org", "demo", "--name", "closed-app", "--no-sign-up")
        stack.admin("attach-provider", "--app", "closed-app", "--appid", "wxclosed0000001", stdin="s" * 32)
        async with session.post(stack.sandbox + "/sandbox/apps", json={"appid": "wxclosed0000001", "secret": "s" * 32}):
            pass
        async with session.post(stack.sandbox + "/sandbox/login", json={"appid": "wxclosed0000001"}) as resp:
            wx = await resp.json()
        data = {"tag": "wechat_miniprogram", "client_id": app["clientId"], "code": wx["code"]}
        body, _ = await post_token(session, stack, 400, data=data)
        assert body["error"] == "invalid_grant"
        assert await db.fetchval("SELECT count(*) FROM wechat_identities WHERE openid = $1", wx["openid"]) == 0

    async def test_application_without_provider(self, session, stack):
        """An application with no WeChat mini-program provider is 401 invalid_client, as in Casdoor."""
        app = stack.admin("create-app", "--org", "demo", "--name", "web-only-app")
        data = {"tag": "wechat_miniprogram", "client_id": app["clientId"], "code": "abc"}
        body, _ = await post_token(session, stack, 401, data=data)
        assert "does not support wechat mini program" in body["error_description"]


class TestNoWorker:
    async def test_clear_timeout_when_no_worker_answers(self, session, stack_without_workers):
        """With no auth worker running, the client gets a 504 with a clear description at the deadline."""
        stack = stack_without_workers
        code = await wx_login(session, stack, "o-lonely")
        data = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        start = time.monotonic()
        body, resp = await post_token(session, stack, 504, data=data)
        elapsed = time.monotonic() - start
        assert 1.4 < elapsed < 5, elapsed
        assert body["error"] == "temporarily_unavailable"
        assert "no auth worker answered" in body["error_description"]
