"""Phone sign-in end to end (``tag=wechat_miniprogram_phone``): gateway → stream → 3 auth workers → the sandbox's
stable_token and getuserphonenumber → user store; and the one cluster-wide access token it runs on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import _stack_fixture
from tests.oauth_helpers import claims_of, make_app
from tests.stack import Stack

phone_stack = _stack_fixture("phone_stack", AUTH_WORKERS="3")


@pytest.fixture(name="pdb")
async def _pdb(phone_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(phone_stack.env["DATABASE_URL"])
    yield conn
    await conn.close()


async def phone_code(session: aiohttp.ClientSession, stack: Stack, appid: str, phone: str, **extra: str) -> str:
    """What the getPhoneNumber button hands the mini program (the sandbox plays WeChat)."""
    async with session.post(
        stack.sandbox + "/sandbox/phone-code", json={"appid": appid, "phoneNumber": phone, **extra}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["code"])


async def wx_login(session: aiohttp.ClientSession, stack: Stack, appid: str, openid: str) -> str:
    async with session.post(stack.sandbox + "/sandbox/login", json={"appid": appid, "openid": openid}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["code"])


async def sign_in(
    session: aiohttp.ClientSession, stack: Stack, client_id: str, code: str, status: int = 200, **extra: str
) -> dict[str, Any]:
    data = {"tag": "wechat_miniprogram_phone", "client_id": client_id, "code": code, **extra}
    async with session.post(stack.token_url, data=data) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        assert resp.status == status, body
        return body


async def stable_token_calls(session: aiohttp.ClientSession, stack: Stack, appid: str) -> int:
    async with session.get(stack.sandbox + "/sandbox/stats") as resp:
        return int((await resp.json())["stable_token_calls"].get(appid, 0))


class TestPhoneSignIn:
    async def test_new_user_then_the_same_user(self, session, phone_stack, pdb):
        """A first phone sign-in creates the user with phone digits + country code; the next finds them; the phone
        code works once (a replay is invalid_grant); the phone number shows in no log line."""
        app = make_app(phone_stack, "phone-new")
        code = await phone_code(session, phone_stack, app["appid"], "13912345678")
        first = await sign_in(session, phone_stack, app["clientId"], code)
        sub = claims_of(first["access_token"])["sub"]
        row = await pdb.fetchrow("SELECT phone, country_code, name FROM users WHERE id = $1", sub)
        assert (row["phone"], row["country_code"]) == ("13912345678", "86")
        assert "13912345678" not in row["name"]
        again = await sign_in(
            session, phone_stack, app["clientId"], await phone_code(session, phone_stack, app["appid"], "13912345678")
        )
        assert claims_of(again["access_token"])["sub"] == sub
        replay = await sign_in(session, phone_stack, app["clientId"], code, status=400)
        assert replay["error"] == "invalid_grant"
        foreign = await sign_in(
            session,
            phone_stack,
            app["clientId"],
            await phone_code(session, phone_stack, app["appid"], "2025550123", countryCode="1"),
        )
        assert claims_of(foreign["access_token"])["sub"] != sub
        assert "13912345678" not in phone_stack.log_tail(200_000)
        assert "2025550123" not in phone_stack.log_tail(200_000)

    async def test_workers_share_one_access_token_and_a_40001_costs_one_call(self, session, phone_stack):
        """12 sign-ins at once over 3 worker processes: WeChat sees one stable_token call for the AppID; once WeChat
        rejects the token (40001), the next sign-ins cost exactly one more call."""
        app = make_app(phone_stack, "phone-token")
        codes = [await phone_code(session, phone_stack, app["appid"], f"1380000{i:04d}") for i in range(12)]
        bodies = await asyncio.gather(*(sign_in(session, phone_stack, app["clientId"], code) for code in codes))
        assert all("access_token" in body for body in bodies)
        assert await stable_token_calls(session, phone_stack, app["appid"]) == 1
        async with session.post(
            phone_stack.sandbox + "/sandbox/faults", json={"appid": app["appid"], "access_token": "revoke"}
        ) as resp:
            assert await resp.json() == {"rejected": 1}
        codes = [await phone_code(session, phone_stack, app["appid"], f"1390000{i:04d}") for i in range(6)]
        bodies = await asyncio.gather(*(sign_in(session, phone_stack, app["clientId"], code) for code in codes))
        assert all("access_token" in body for body in bodies)
        assert await stable_token_calls(session, phone_stack, app["appid"]) == 2

    async def test_preprovisioned_users_only(self, session, phone_stack):
        """An application set to pre-provisioned users only refuses an unknown number and signs in the user an
        admin created with it."""
        app = make_app(phone_stack, "phone-preprov")
        assert phone_stack.admin("set-preprovisioned", "--app", app["name"], "--on", "1")["preprovisionedOnly"] is True
        refused = await sign_in(
            session,
            phone_stack,
            app["clientId"],
            await phone_code(session, phone_stack, app["appid"], "13700000001"),
            status=400,
        )
        assert refused == {"error": "invalid_grant", "error_description": "no account for this phone number"}
        user = phone_stack.admin("create-user", "--org", "demo", "--name", "alice-preprov", "--phone", "13700000002")
        assert "13700000002" not in str(user)
        body = await sign_in(
            session, phone_stack, app["clientId"], await phone_code(session, phone_stack, app["appid"], "13700000002")
        )
        assert claims_of(body["access_token"])["sub"] == user["id"]

    async def test_login_code_links_the_wechat_identity(self, session, phone_stack):
        """With login_code the WeChat identity is linked: a later mini-program login finds the phone user; the same
        identity with another user's phone is refused with 409 naming no one; the login code works once."""
        app = make_app(phone_stack, "phone-link")
        login_code = await wx_login(session, phone_stack, app["appid"], "o-phone-link")
        code = await phone_code(session, phone_stack, app["appid"], "13600000001")
        body = await sign_in(session, phone_stack, app["clientId"], code, login_code=login_code)
        sub = claims_of(body["access_token"])["sub"]
        data = {"tag": "wechat_miniprogram", "client_id": app["clientId"], "code": login_code}
        async with session.post(phone_stack.token_url, data=data) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"  # spent by the phone sign-in
        data["code"] = await wx_login(session, phone_stack, app["appid"], "o-phone-link")
        async with session.post(phone_stack.token_url, data=data) as resp:
            assert resp.status == 200
            assert claims_of((await resp.json())["access_token"])["sub"] == sub

        other_code = await phone_code(session, phone_stack, app["appid"], "13600000002")
        refused = await sign_in(
            session,
            phone_stack,
            app["clientId"],
            other_code,
            status=409,
            login_code=await wx_login(session, phone_stack, app["appid"], "o-phone-link"),
        )
        assert "13600000001" not in str(refused) and sub not in str(refused)

    async def test_bad_codes(self, session, phone_stack):
        app = make_app(phone_stack, "phone-bad")
        other = make_app(phone_stack, "phone-other")
        unknown = await sign_in(session, phone_stack, app["clientId"], "no-such-code", status=400)
        assert unknown["error"] == "invalid_grant"
        foreign = await phone_code(session, phone_stack, other["appid"], "13500000001")
        assert (await sign_in(session, phone_stack, app["clientId"], foreign, status=400))["error"] == "invalid_grant"
        missing = await sign_in(session, phone_stack, app["clientId"], "", status=400)
        assert missing["error"] == "invalid_request"


async def account_post(
    session: aiohttp.ClientSession, stack: Stack, path: str, token: str, status: int = 200, **data: str
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(stack.gateway + path, data=data, headers=headers) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
        assert resp.status == status, body
        return body


async def mini_login(session: aiohttp.ClientSession, stack: Stack, app: dict[str, str], openid: str) -> str:
    data = {
        "tag": "wechat_miniprogram",
        "client_id": app["clientId"],
        "code": await wx_login(session, stack, app["appid"], openid),
    }
    async with session.post(stack.token_url, data=data) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(claims_of(body["access_token"])["sub"])


class TestLinking:
    async def test_link_then_login_finds_the_account_and_unlink(self, session, phone_stack, pdb):
        """A phone user links a WeChat identity (the code exchanged once: a replay is invalid_grant); a mini-program
        login with it finds that account; another user cannot take it (409 naming no one); unlinking it leaves the
        phone, and the next mini-program login with it is a new user."""
        app = make_app(phone_stack, "link-app")
        alice = await sign_in(
            session, phone_stack, app["clientId"], await phone_code(session, phone_stack, app["appid"], "13100000001")
        )
        alice_sub = claims_of(alice["access_token"])["sub"]
        code = await wx_login(session, phone_stack, app["appid"], "o-link-alice")
        linked = await account_post(session, phone_stack, "/api/link-wechat", alice["access_token"], code=code)
        assert linked["status"] == "ok" and linked["data"] == {"appid": app["appid"], "linked": True}
        replay = await account_post(
            session, phone_stack, "/api/link-wechat", alice["access_token"], status=400, code=code
        )
        assert replay["status"] == "error"
        async with session.get(phone_stack.sandbox + f"/sandbox/codes/{code}") as resp:
            assert (await resp.json())["exchanged"] == 1
        assert await mini_login(session, phone_stack, app, "o-link-alice") == alice_sub

        bob = await sign_in(
            session, phone_stack, app["clientId"], await phone_code(session, phone_stack, app["appid"], "13100000002")
        )
        taken = await account_post(
            session,
            phone_stack,
            "/api/link-wechat",
            bob["access_token"],
            status=409,
            code=await wx_login(session, phone_stack, app["appid"], "o-link-alice"),
        )
        assert alice_sub not in str(taken) and "13100000001" not in str(taken)

        unlinked = await account_post(session, phone_stack, "/api/unlink-wechat", alice["access_token"])
        assert unlinked["data"] == {"appid": app["appid"], "linked": False}
        count = await pdb.fetchval("SELECT count(*) FROM wechat_identities WHERE user_id = $1", alice_sub)
        assert count == 0
        assert await mini_login(session, phone_stack, app, "o-link-alice") != alice_sub

    async def test_the_last_way_to_sign_in_stays(self, session, phone_stack):
        """A user who signs in only with WeChat cannot unlink it; no bearer: 401."""
        app = make_app(phone_stack, "link-last")
        data = {
            "tag": "wechat_miniprogram",
            "client_id": app["clientId"],
            "code": await wx_login(session, phone_stack, app["appid"], "o-only-wechat"),
        }
        async with session.post(phone_stack.token_url, data=data) as resp:
            token = (await resp.json())["access_token"]
        refused = await account_post(session, phone_stack, "/api/unlink-wechat", token, status=400)
        assert "last way to sign in" in refused["msg"]
        await account_post(session, phone_stack, "/api/link-wechat", "", status=401, code="abc")
