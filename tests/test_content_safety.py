"""Content safety end to end: the gateway, the job stream, an auth worker, the WeChat sandbox's ``msg_sec_check``
and ``media_check_async`` (and its message push back to the gateway), the user store and PostgreSQL.

An application created here with ``set-content-safety`` on: display names (at login and on update-user) pass only
when WeChat says "pass"; an uploaded avatar is nobody's until its pushed verdict passes it, is dropped when risky,
and meets the timeout policy when no verdict comes (``hold`` in ``stack``, ``show`` in ``show_stack``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.account_helpers import account, update
from tests.conftest import _stack_fixture
from tests.oauth_helpers import claims_of, eventually, make_app, stack_login
from tests.stack import Stack
from tests.test_avatars import image_bytes, upload
from user_store.content_safety import push_signature

#: A verdict the sandbox never pushes is settled by the sweep this soon.
TIMEOUT = 1.5
stack = _stack_fixture("stack", AVATAR_REVIEW_TIMEOUT=str(TIMEOUT))
show_stack = _stack_fixture("show_stack", AVATAR_REVIEW_TIMEOUT=str(TIMEOUT), AVATAR_REVIEW_ON_TIMEOUT="show")


def screened_app(stack: Stack, name: str) -> dict[str, Any]:
    """A new application with content safety on (before anything caches it), its message push configured in the
    sandbox as ``make set-content-safety`` says to configure it in WeChat's console."""
    app = make_app(stack, name)
    result = stack.admin("set-content-safety", "--app", name, "--on", "1")
    assert result["application"]["contentSafety"] is True
    push = result["message_push"]
    assert push["url"].endswith(f"/api/wechat-push/{app['appid']}") and len(push["token"]) == 32
    return {**app, "push_token": push["token"]}


async def configure_push(session: aiohttp.ClientSession, stack: Stack, app: dict[str, Any]) -> None:
    body = {"appid": app["appid"], "url": f"{stack.gateway}/api/wechat-push/{app['appid']}", "token": app["push_token"]}
    async with session.post(stack.sandbox + "/sandbox/push-config", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def verdicts(session: aiohttp.ClientSession, stack: Stack, appid: str, suggest: str, **extra: int) -> None:
    body = {"appid": appid, "suggest": suggest, **extra}
    async with session.post(stack.sandbox + "/sandbox/media-verdicts", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def sandbox_stats(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with session.get(stack.sandbox + "/sandbox/stats") as resp:
        return dict(await resp.json())


async def user_of(
    session: aiohttp.ClientSession, stack: Stack, app: dict[str, Any], *, username: str = "", avatar: str = ""
) -> dict[str, Any]:
    openid = f"o-{time.monotonic_ns()}"
    token = await stack_login(
        session, stack, openid, client_id=app["clientId"], appid=app["appid"], username=username, avatar=avatar
    )
    return {**token, "openid": openid, "id": claims_of(token["access_token"])["sub"]}


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status


async def audit_actions(db: Any, user_id: str, count: int) -> list[str]:
    """The user's content-safety audit events, once ``count`` have been written (the writer batches)."""
    actions: list[str] = []

    async def written() -> bool:
        rows = await db.fetch(
            "SELECT action FROM audit_events WHERE target_user_id = $1::uuid AND action LIKE 'content_safety.%' "
            "ORDER BY at",
            user_id,
        )
        actions[:] = [row["action"] for row in rows]
        return len(actions) >= count

    try:
        await eventually(written, 10, f"{count} content-safety audit events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: only {actions}") from None
    return actions


class TestDisplayNames:
    async def test_login_keeps_a_nickname_only_when_wechat_passes_it(self, session, stack):
        """A risky or doubtful nickname is dropped (the login still succeeds), a clean one becomes the display name;
        an avatar URL a login carries is never taken on trust."""
        app = screened_app(stack, "names-at-login")
        before = (await sandbox_stats(session, stack))["msg_sec_check_calls"]
        risky = await user_of(session, stack, app, username="sandbox-risky nick")
        doubtful = await user_of(session, stack, app, username="sandbox-review nick")
        clean = await user_of(session, stack, app, username="Alice 爱丽丝", avatar="https://cdn.example.com/a.png")
        assert (await account(session, stack, risky["access_token"]))["displayName"] == ""
        assert (await account(session, stack, doubtful["access_token"]))["displayName"] == ""
        clean_account = await account(session, stack, clean["access_token"])
        assert clean_account["displayName"] == "Alice 爱丽丝" and clean_account["avatar"] == ""
        assert (await sandbox_stats(session, stack))["msg_sec_check_calls"] == before + 3

    async def test_update_user_refuses_a_name_wechat_does_not_pass(self, session, stack):
        """update-user with a refused name: 400 saying so (in Chinese when asked), and nothing is written."""
        app = screened_app(stack, "names-on-update")
        user = await user_of(session, stack, app)
        token = user["access_token"]
        for name in ("sandbox-risky", "I am sandbox-review"):
            body = await update(session, stack, {"displayName": name}, status=400, token=token)
            assert body["msg"] == "the display name was refused by content safety; choose another"
        async with session.post(
            stack.gateway + "/api/update-user",
            json={"displayName": "sandbox-risky"},
            headers={"Authorization": f"Bearer {token}", "Accept-Language": "zh-CN"},
        ) as resp:
            assert resp.status == 400 and "内容安全" in (await resp.json())["msg"]
        assert (await account(session, stack, token))["displayName"] == ""
        assert (await update(session, stack, {"displayName": "小明"}, token=token))["data"] == "Affected"
        assert (await account(session, stack, token))["displayName"] == "小明"

    async def test_an_application_without_it_makes_no_call(self, session, stack):
        """The demo application does not screen: its names reach WeChat's content security never."""
        before = (await sandbox_stats(session, stack))["msg_sec_check_calls"]
        token = (await stack_login(session, stack, f"o-{time.monotonic_ns()}", username="sandbox-risky"))[
            "access_token"
        ]
        assert (await account(session, stack, token))["displayName"] == "sandbox-risky"
        assert (await update(session, stack, {"displayName": "sandbox-risky 2"}, token=token))["data"] == "Affected"
        assert (await sandbox_stats(session, stack))["msg_sec_check_calls"] == before


class TestAvatars:
    async def test_an_avatar_is_shown_once_it_passes(self, session, stack, db):
        """Pending: served at its URL (WeChat downloads it) but nobody's avatar; WeChat's pushed pass makes it the
        user's, and the audit log says so."""
        app = screened_app(stack, "avatar-pass")
        await configure_push(session, stack, app)
        user = await user_of(session, stack, app)
        token = user["access_token"]
        await verdicts(session, stack, app["appid"], "pass", delay_ms=600)
        body = await upload(session, stack, token, image_bytes("PNG"))
        url = body["data"]
        assert body["data2"]["pending"] is True
        assert (await account(session, stack, token))["avatar"] == ""
        assert await status_of(session, url) == 200

        async def shown() -> bool:
            return bool((await account(session, stack, token))["avatar"] == url)

        await eventually(shown, 10, "the passed avatar becoming the user's")
        assert await status_of(session, url) == 200
        assert await audit_actions(db, user["id"], 1) == ["content_safety.avatar_passed"]
        assert (await sandbox_stats(session, stack))["media_pushes_sent"] >= 1

    async def test_a_risky_avatar_is_dropped(self, session, stack, db):
        app = screened_app(stack, "avatar-risky")
        await configure_push(session, stack, app)
        user = await user_of(session, stack, app)
        await verdicts(session, stack, app["appid"], "risky")
        url = (await upload(session, stack, user["access_token"], image_bytes("JPEG")))["data"]

        async def dropped() -> bool:
            return await status_of(session, url) == 404

        await eventually(dropped, 10, "the risky avatar being dropped")
        assert (await account(session, stack, user["access_token"]))["avatar"] == ""
        assert await audit_actions(db, user["id"], 1) == ["content_safety.avatar_refused"]

    async def test_no_verdict_in_time_holds_the_avatar_back(self, session, stack, db):
        """AVATAR_REVIEW_ON_TIMEOUT=hold (the default): an avatar no verdict reached in time is dropped."""
        app = screened_app(stack, "avatar-hold")
        await configure_push(session, stack, app)
        user = await user_of(session, stack, app)
        await verdicts(session, stack, app["appid"], "none")
        url = (await upload(session, stack, user["access_token"], image_bytes("PNG")))["data"]
        assert await status_of(session, url) == 200

        async def dropped() -> bool:
            return await status_of(session, url) == 404

        await eventually(dropped, TIMEOUT + 10, "the unchecked avatar being dropped")
        assert (await account(session, stack, user["access_token"]))["avatar"] == ""
        assert await audit_actions(db, user["id"], 1) == ["content_safety.avatar_unchecked"]

    async def test_a_url_set_by_update_user_is_refused(self, session, stack):
        """An avatar URL a user sets with update-user would skip the screening: refused, the avatar unchanged; a
        full user object sent back with its avatar as read still updates."""
        app = screened_app(stack, "avatar-by-url")
        user = await user_of(session, stack, app)
        token = user["access_token"]
        body = await update(session, stack, {"avatar": "https://cdn.example.com/me.png"}, status=400, token=token)
        assert "upload-avatar" in body["msg"]
        me = await account(session, stack, token)
        assert me["avatar"] == ""
        change = {**me, "email": f"{user['openid']}@example.com"}
        assert (await update(session, stack, change, token=token))["data"] == "Affected"

    async def test_a_failed_submission_keeps_nothing(self, session, stack, db):
        """WeChat refuses the check: the upload says why (502) and no avatar waits for a verdict."""
        app = screened_app(stack, "avatar-refused-check")
        user = await user_of(session, stack, app)
        fault = {"api": "media_check_async", "errcode": 40003, "errmsg": "invalid openid", "count": 1}
        async with session.post(stack.sandbox + "/sandbox/faults", json=fault) as resp:
            assert resp.status == 200, await resp.text()
        body = await upload(session, stack, user["access_token"], image_bytes("PNG"), status=502)
        assert "40003" in body["msg"]
        assert await db.fetchval("SELECT count(*) FROM avatar_reviews WHERE user_id = $1::uuid", user["id"]) == 0


class TestShowPolicy:
    async def test_shown_after_the_timeout_then_taken_back_by_a_late_risky_verdict(self, session, show_stack):
        """AVATAR_REVIEW_ON_TIMEOUT=show: no verdict in time shows the avatar; a risky one that comes later takes
        it back, and the user has the avatar they had before."""
        stack = show_stack
        app = screened_app(stack, "avatar-show")
        await configure_push(session, stack, app)
        user = await user_of(session, stack, app)
        token = user["access_token"]
        await verdicts(session, stack, app["appid"], "pass")
        first = (await upload(session, stack, token, image_bytes("PNG")))["data"]

        async def is_avatar(url: str) -> bool:
            return bool((await account(session, stack, token))["avatar"] == url)

        await eventually(lambda: is_avatar(first), 10, "the first avatar passing")
        await verdicts(session, stack, app["appid"], "risky", delay_ms=int((TIMEOUT + 4) * 1000))
        second = (await upload(session, stack, token, image_bytes("JPEG")))["data"]
        await eventually(lambda: is_avatar(second), TIMEOUT + 5, "the unchecked avatar being shown")
        await eventually(lambda: is_avatar(first), 15, "the late risky verdict restoring the first avatar")
        assert await status_of(session, second) == 404
        assert await status_of(session, first) == 200  # the first avatar's bytes are back too
        db = await asyncpg.connect(stack.env["DATABASE_URL"])  # the ``db`` fixture is the other stack's
        try:
            actions = await audit_actions(db, user["id"], 3)
        finally:
            await db.close()
        assert actions == [
            "content_safety.avatar_passed",
            "content_safety.avatar_shown_unchecked",
            "content_safety.avatar_refused",
        ]


class TestMessagePush:
    async def test_only_wechat_signed_requests_are_heard(self, session, stack):
        """The URL check answers echostr when signed with the Token; a wrong signature, a stale timestamp or an
        unknown AppID is refused (403 alike), and a forged verdict changes nothing."""
        app = screened_app(stack, "push-signature")
        url = f"{stack.gateway}/api/wechat-push/{app['appid']}"
        now = str(int(time.time()))
        good = {"timestamp": now, "nonce": "12345", "signature": push_signature(app["push_token"], now, "12345")}
        async with session.get(url, params={**good, "echostr": "4375120948345356249"}) as resp:
            assert resp.status == 200 and await resp.text() == "4375120948345356249"
        for params in (
            {**good, "signature": "0" * 40},
            {**good, "timestamp": "1714036504", "signature": push_signature(app["push_token"], "1714036504", "1")},
        ):
            async with session.get(url, params={**params, "echostr": "1"}) as resp:
                assert resp.status == 403, await resp.text()
        event = {"Event": "wxa_media_check", "trace_id": "forged", "errcode": 0, "result": {"suggest": "pass"}}
        async with session.post(url, params={**good, "signature": "f" * 40}, json=event) as resp:
            assert resp.status == 403
        async with session.get(f"{stack.gateway}/api/wechat-push/wxunknown000000", params=good) as resp:
            assert resp.status == 403  # as a bad signature: which AppIDs exist is not told

        async with session.post(url, params=good, json={"Event": "user_enter_tempsession"}) as resp:
            assert resp.status == 200 and await resp.text() == "success"


@pytest.fixture(autouse=True)
async def _quiet_sandbox(session: aiohttp.ClientSession, request: pytest.FixtureRequest) -> None:
    """Faults one test queued never reach the next."""
    for name in ("stack", "show_stack"):
        if name in request.fixturenames:
            target: Stack = request.getfixturevalue(name)
            async with session.delete(target.sandbox + "/sandbox/faults"):
                pass
    await asyncio.sleep(0)
