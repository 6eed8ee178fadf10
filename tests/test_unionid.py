"""unionid end to end: two mini programs of one organization whose WeChat users share a unionid sign them in to one
user, through the gateway, the stream, a worker and the sandbox; across organizations the same unionid is two users.
"""

from __future__ import annotations

import secrets
import urllib.request
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.oauth_helpers import claims_of, make_app
from tests.stack import Stack


async def login_as(
    session: aiohttp.ClientSession, stack: Stack, app: dict[str, str], openid: str, unionid: str
) -> dict[str, Any]:
    """wx.login() in ``app``'s mini program for a WeChat user with ``openid`` there and ``unionid``, then the token
    endpoint; the access token's claims."""
    body = {"appid": app["appid"], "openid": openid, "unionid": unionid}
    async with session.post(stack.sandbox + "/sandbox/login", json=body) as resp:
        assert resp.status == 200, await resp.text()
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": app["clientId"], "code": code}
    async with session.post(stack.token_url, data=form) as resp:
        token = await resp.json()
        assert resp.status == 200, token
    return claims_of(token["access_token"])


def other_org_app(stack: Stack, org: str) -> dict[str, str]:
    """An application of a new organization ``org`` with its own mini-program provider, known to the sandbox."""
    stack.admin("create-org", "--name", org)
    app = stack.admin("create-app", "--org", org, "--name", f"{org}-app")
    appid, secret = f"wx{org.replace('-', '')[:14]:0<14}", "s" * 32
    stack.admin("attach-provider", "--app", f"{org}-app", "--appid", appid, stdin=secret)
    req = urllib.request.Request(
        stack.sandbox + "/sandbox/apps",
        data=msgspec.json.encode({"appid": appid, "secret": secret}),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    return {"clientId": app["clientId"], "appid": appid}


@pytest.fixture(scope="module", name="apps")
def _apps(stack: Stack) -> tuple[dict[str, str], dict[str, str]]:
    """Two mini programs (two applications, two providers, two appids) of the demo organization."""
    return make_app(stack, "union-shop"), make_app(stack, "union-club")


class TestUnionid:
    async def test_two_mini_programs_of_one_organization(self, session, stack, db, apps):
        """Two mini programs (two providers, two appids) of one organization: a WeChat user with a different openid
        in each but one unionid is one user, with one identity row per (organization, appid, openid); a second
        login in either finds that user again and adds no row."""
        shop, club = apps
        assert shop["appid"] != club["appid"]
        unionid = f"u-{secrets.token_hex(8)}"
        openid_shop, openid_club = f"o-shop-{secrets.token_hex(4)}", f"o-club-{secrets.token_hex(4)}"

        first = await login_as(session, stack, shop, openid_shop, unionid)
        second = await login_as(session, stack, club, openid_club, unionid)
        assert second["sub"] == first["sub"]
        assert (first["aud"], second["aud"]) == ([shop["clientId"]], [club["clientId"]])
        again = await login_as(session, stack, club, openid_club, unionid)
        assert again["sub"] == first["sub"]

        rows = await db.fetch(
            "SELECT user_id::text, appid, openid, unionid FROM wechat_identities WHERE unionid = $1 ORDER BY appid",
            unionid,
        )
        assert sorted((r["appid"], r["openid"]) for r in rows) == sorted(
            [(shop["appid"], openid_shop), (club["appid"], openid_club)]
        )
        assert {r["user_id"] for r in rows} == {first["sub"]}
        assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1::uuid", first["sub"]) == 1

    async def test_without_unionid_two_users(self, session, stack, apps):
        """Without a shared unionid, the same person's two openids are two users (nothing links them)."""
        shop, club = apps
        first = await login_as(session, stack, shop, f"o-{secrets.token_hex(6)}", "")
        second = await login_as(session, stack, club, f"o-{secrets.token_hex(6)}", "")
        assert first["sub"] != second["sub"]

    async def test_different_organizations_are_different_users(self, session, stack, db, apps):
        """The same unionid in mini programs of two organizations signs in two users, one per organization."""
        demo = apps[0]
        other = other_org_app(stack, "union-other")
        unionid = f"u-{secrets.token_hex(8)}"
        first = await login_as(session, stack, demo, f"o-{secrets.token_hex(6)}", unionid)
        second = await login_as(session, stack, other, f"o-{secrets.token_hex(6)}", unionid)
        assert first["sub"] != second["sub"]
        orgs = await db.fetch(
            "SELECT DISTINCT o.name FROM wechat_identities i JOIN organizations o ON o.id = i.organization_id"
            " WHERE i.unionid = $1",
            unionid,
        )
        assert sorted(r["name"] for r in orgs) == ["demo", "union-other"]
        assert await db.fetchval("SELECT count(*) FROM wechat_identities WHERE unionid = $1", unionid) == 2
