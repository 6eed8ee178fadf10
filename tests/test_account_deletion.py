"""Users' rights through the gateway: account deletion (by the user with a fresh wx.login() code or its password,
by the application with Casdoor's delete-user, by the admin CLI) and the data export."""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiohttp
import asyncpg

from tests import test_casdoor_sdk
from tests.account_helpers import api, app_params, new_user, update
from tests.oauth_helpers import claims_of, eventually, introspect, issued_session_key, stack_login
from tests.stack import Stack
from tests.test_casdoor_sdk import sdk, value

#: The Casdoor SDK's interpreter, the fixture of the SDK tests.
sdk_python = test_casdoor_sdk.sdk_python


async def wx_login_code(session: aiohttp.ClientSession, stack: Stack, openid: str) -> str:
    """What wx.login() gives the mini program: a fresh code of ``openid`` (from the sandbox)."""
    body = {"appid": stack.demo["wechatAppId"], "openid": openid}
    async with session.post(stack.sandbox + "/sandbox/login", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["code"])


async def delete_account(
    session: aiohttp.ClientSession, stack: Stack, token: str, *, status: int = 200, **form: str
) -> dict[str, Any]:
    return await api(session, stack, "POST", "/api/delete-account", status=status, token=token, data=form)


async def inactive_everywhere(session: aiohttp.ClientSession, stack: Stack, token: str) -> float:
    """Seconds until the gateway's introspection reads ``token`` inactive (it answers alone when it can)."""

    async def check() -> bool:
        return (await introspect(session, stack, token))["active"] is False

    return await eventually(check, 1.0, "the token reading inactive")


async def assert_erased(db: asyncpg.Connection, user_id: str, openid: str) -> None:
    """Only a tombstone is left: no identity, no session_key, no profile, the name freed."""
    row = await db.fetchrow("SELECT * FROM users WHERE id = $1::uuid", user_id)
    assert row is not None and row["erased_at"] is not None and row["is_deleted"]
    assert row["name"] == f"erased:{user_id}"
    assert (row["display_name"], row["avatar"], row["email"], row["phone"]) == ("", "", "", "")
    assert row["password_hash"] is None and as_json(row["properties"]) == {}
    assert await db.fetchval("SELECT count(*) FROM wechat_identities WHERE user_id = $1::uuid", user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM wechat_identities WHERE openid = $1", openid) == 0
    live = await db.fetchval(
        "SELECT count(*) FROM tokens WHERE user_id = $1::uuid AND (revoked_at IS NULL OR session_key <> ''"
        " OR session_key_sealed IS NOT NULL)",
        user_id,
    )
    assert live == 0


def as_json(value: Any) -> Any:
    """A jsonb column as the test's plain connection reads it (text)."""
    return json.loads(value) if isinstance(value, str) else value


async def deletion_event(db: asyncpg.Connection, user_id: str) -> dict[str, Any]:
    async def written() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM audit_events WHERE action = 'account_deleted' AND target_user_id = $1::uuid",
                user_id,
            )
        )

    await eventually(written, 5.0, "the account_deleted audit row")
    row = await db.fetchrow(
        "SELECT * FROM audit_events WHERE action = 'account_deleted' AND target_user_id = $1::uuid", user_id
    )
    assert row is not None
    return {**dict(row), "details": as_json(row["details"])}


class TestDeleteAccount:
    async def test_fresh_code_deletes_everything_and_frees_the_identity(self, session, stack, db):
        """With its token and a fresh wx.login() code, a user deletes itself: every token of each of its logins
        reads inactive within a second, refresh and account calls fail, only a tombstone is left, the audit row
        holds no personal data, and the same WeChat user logging in again is a new user with the same name."""
        user = await new_user(session, stack)
        second = await stack_login(session, stack, user["openid"])
        for token in (user["access_token"], second["access_token"]):
            assert (await introspect(session, stack, token))["active"] is True
        code = await wx_login_code(session, stack, user["openid"])
        body = await delete_account(session, stack, user["access_token"], code=code)
        assert body["data"] == "Affected"

        waited = [await inactive_everywhere(session, stack, t) for t in (user["access_token"], second["access_token"])]
        print(f"deletion: tokens inactive after {max(waited):.3f}s")
        await api(session, stack, "GET", "/api/get-account", status=401, token=second["access_token"])
        form = {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
        async with session.post(stack.token_url, data={**form, "client_id": stack.demo["clientId"]}) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
        await assert_erased(db, user["id"], user["openid"])

        event = await deletion_event(db, user["id"])
        assert event["client_ip"] is None and event["actor_kind"] == "user"
        assert event["details"]["proof"] == "wechat_code" and event["details"]["identities"] == 1
        assert event["details"]["revoked"] == 3  # both logins and the proof's
        text = json.dumps(event["details"]) + event["actor_id"]
        assert user["openid"] not in text and user["name"] not in text
        addresses = await db.fetchval(
            "SELECT count(*) FROM audit_events WHERE target_user_id = $1::uuid AND client_ip IS NOT NULL", user["id"]
        )
        assert addresses == 0

        again = await stack_login(session, stack, user["openid"])
        claims = claims_of(again["access_token"])
        assert claims["sub"] != user["id"] and claims["name"] == user["name"]
        await api(session, stack, "GET", "/api/get-account", token=again["access_token"])
        body = await api(session, stack, "GET", "/api/get-user", params=app_params(stack, id=f"demo/{user['name']}"))
        assert body["data"]["id"] == claims["sub"]
        await api(
            session,
            stack,
            "GET",
            "/api/get-user",
            status=404,
            params=app_params(stack, owner="demo", userId=user["id"]),
        )

    async def test_code_of_another_wechat_user_is_refused(self, session, stack):
        """A code that WeChat says is another user's does not delete the account (403); the login it made is ended
        at once, and neither user loses anything else."""
        user, other = await new_user(session, stack), await new_user(session, stack)
        code = await wx_login_code(session, stack, other["openid"])
        body = await delete_account(session, stack, user["access_token"], status=403, code=code)
        assert "another WeChat user" in body["msg"]
        for token in (user["access_token"], other["access_token"]):
            assert (await introspect(session, stack, token))["active"] is True

    async def test_used_or_bad_codes_and_missing_proof(self, session, stack):
        """A code WeChat refuses is the login's error (400); no proof at all is 400; a token alone is not enough,
        nor are client credentials, which have no account of their own (401)."""
        user = await new_user(session, stack)
        await delete_account(session, stack, user["access_token"], status=400)
        body = await delete_account(session, stack, user["access_token"], status=400, code="not-a-real-code")
        assert body["msg"]
        await api(
            session, stack, "POST", "/api/delete-account", status=401, params=app_params(stack), data={"code": "x"}
        )
        await api(session, stack, "POST", "/api/delete-account", status=401, data={"code": "x"})
        await delete_account(session, stack, "garbage", status=401, code="x")
        assert (await introspect(session, stack, user["access_token"]))["active"] is True

    async def test_password_proof(self, session, stack, db):
        """A user with a password may prove the deletion with it, sent in the body: a wrong one is 403, one in the
        URL 400, the right one deletes."""
        user = await new_user(session, stack)
        await update(session, stack, {"password": "correct horse"}, token=user["access_token"])
        await delete_account(session, stack, user["access_token"], status=403, password="wrong horse")
        await api(
            session, stack, "POST", "/api/delete-account", status=400, token=user["access_token"],
            params={"password": "correct horse"},
        )  # fmt: skip
        await delete_account(session, stack, user["access_token"], password="correct horse")
        await inactive_everywhere(session, stack, user["access_token"])
        await assert_erased(db, user["id"], user["openid"])
        assert (await deletion_event(db, user["id"]))["details"]["proof"] == "password"

    async def test_without_password_a_password_proof_fails(self, session, stack):
        """An account without a password cannot be deleted with one (403 pointing to wx.login())."""
        user = await new_user(session, stack)
        body = await delete_account(session, stack, user["access_token"], status=403, password="anything")
        assert "wx.login()" in body["msg"]


class TestDeleteUser:
    async def test_application_deletes_a_user(self, session, stack, db):
        """Casdoor's delete-user with the application's credentials (query) and the user as the body erases it;
        again, or for a user that never was, it is "Unaffected"."""
        user = await new_user(session, stack)
        params = app_params(stack, id=f"demo/{user['name']}")
        body = await api(
            session, stack, "POST", "/api/delete-user", params=params, json={"owner": "demo", "name": user["name"]}
        )
        assert body["data"] == "Affected"
        await inactive_everywhere(session, stack, user["access_token"])
        await assert_erased(db, user["id"], user["openid"])
        assert (await deletion_event(db, user["id"]))["actor_kind"] == "client"
        body = await api(session, stack, "POST", "/api/delete-user", params=params)
        assert body["data"] == "Unaffected"

    async def test_users_and_other_organizations_may_not(self, session, stack):
        """A normal user may not delete another (403), nor itself through delete-user; nothing changes."""
        user, other = await new_user(session, stack), await new_user(session, stack)
        for target in (other, user):
            params = {"id": f"demo/{target['name']}"}
            await api(session, stack, "POST", "/api/delete-user", status=403, token=user["access_token"], params=params)
        assert (await introspect(session, stack, other["access_token"]))["active"] is True

    async def test_casdoor_sdk_delete_user(self, session, stack, db, sdk_python):
        """The official SDK's ``delete_user`` (get_user, then delete-user with the object) deletes the user."""
        user = await new_user(session, stack)
        [result] = sdk(sdk_python, stack, [["delete_user", user["name"]]])
        assert value(result)["data"] == "Affected"
        await inactive_everywhere(session, stack, user["access_token"])
        await assert_erased(db, user["id"], user["openid"])

    async def test_admin_cli(self, session, stack, db):
        """``make delete-user ORG=… NAME=…`` erases the user and broadcasts the revocations (the stack's Redis)."""
        user = await new_user(session, stack)
        out = stack.admin("delete-user", "--org", "demo", "--name", user["name"])
        assert out == {"id": user["id"], "revoked": 1, "identities": 1, "broadcast": True}
        waited = await inactive_everywhere(session, stack, user["access_token"])
        print(f"admin delete-user: token inactive after {waited:.3f}s")
        await assert_erased(db, user["id"], user["openid"])
        assert (await deletion_event(db, user["id"]))["actor_kind"] == "admin"


class TestExportAccount:
    async def test_export_holds_everything_but_secrets(self, session, stack):
        """The export lists the profile, the WeChat identity, the application signed in to and the sign-ins from
        the audit log, and never a session_key, a password hash or a token."""
        codes: list[str] = []
        openid = f"o-{secrets.token_hex(6)}"
        token = await stack_login(session, stack, openid, codes=codes, username=f"ex{secrets.token_hex(3)}")
        await update(session, stack, {"password": "correct horse"}, token=token["access_token"])
        session_key = await issued_session_key(session, stack, codes[0])

        async def exported() -> dict[str, Any]:
            async with session.get(
                stack.gateway + "/api/export-account", headers={"Authorization": f"Bearer {token['access_token']}"}
            ) as resp:
                assert resp.status == 200
                raw = await resp.text()
            for secret in (session_key, token["access_token"], token["refresh_token"], "$argon2"):
                assert secret not in raw
            return dict(json.loads(raw)["data"])

        async def has_login() -> bool:
            return any(event["action"] == "login" for event in (await exported())["events"])

        await eventually(has_login, 5.0, "the login in the export")
        data = await exported()
        claims = claims_of(token["access_token"])
        assert data["user"]["id"] == claims["sub"] and data["user"]["password"] == "***"
        assert data["organization"] == "demo"
        assert [(i["appid"], i["openid"]) for i in data["identities"]] == [(stack.demo["wechatAppId"], openid)]
        [application] = data["applications"]
        assert application["clientId"] == stack.demo["clientId"] and application["liveLogins"] == 1
        login = next(event for event in data["events"] if event["action"] == "login")
        assert login["clientIp"] == "127.0.0.1" and login["details"]["user"] == "new"

    async def test_export_needs_the_user(self, session, stack):
        """Client credentials have no account to export (401), nor has a bad token."""
        await api(session, stack, "GET", "/api/export-account", status=401, params=app_params(stack))
        await api(session, stack, "GET", "/api/export-account", status=401, token="garbage")
