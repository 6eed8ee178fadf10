"""Refresh with rotation, logout and revocation through the gateway, as a mini program uses them; and a revoked
token refused at once by every gateway replica."""

from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Any

import aiohttp
import pytest

from services.ports import free_port
from tests.account_helpers import account, api, bearer
from tests.oauth_helpers import basic, claims_of, eventually, introspect, revoke, stack_login
from tests.stack import ROOT

REFRESH_PATH = "/api/login/oauth/refresh_token"
TOKEN_PATH = "/api/login/oauth/access_token"


async def login(session, stack) -> dict[str, Any]:
    return await stack_login(session, stack, f"o-{secrets.token_hex(6)}")


async def oauth_post(session, stack, path: str, form: dict[str, str], *, status: int = 200, **kwargs: Any) -> Any:
    """POST an OAuth endpoint; assert the status and, for errors, the ``{error, error_description}`` shape."""
    async with session.post(stack.gateway + path, data=form, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == status, body
        assert resp.headers["Cache-Control"] == "no-store"
    if status != 200:
        assert set(body) == {"error", "error_description"}, body
    return body


async def refresh(session, stack, token: str, *, path: str = REFRESH_PATH, status: int = 200, **form: str):
    """Refresh ``token`` as the demo mini program (no client secret); ``form`` overrides or adds fields."""
    base = {"grant_type": "refresh_token", "client_id": stack.demo["clientId"], "refresh_token": token}
    return await oauth_post(session, stack, path, {**base, **form}, status=status)


async def row(db, token: str) -> Any:
    return await db.fetchrow("SELECT * FROM tokens WHERE id = $1::uuid", claims_of(token)["jti"])


class TestRefresh:
    @pytest.mark.parametrize("path", [REFRESH_PATH, TOKEN_PATH])
    async def test_rotation_keeps_the_login(self, session, stack, db, path):
        """A refresh (either endpoint, no client secret: a public client) answers the token wrapper with a new
        pair in the same family, keeping the session_key; the old access token dies at once."""
        first = await login(session, stack)
        second = await refresh(session, stack, first["refresh_token"], path=path)
        assert set(second) == {"access_token", "id_token", "refresh_token", "token_type", "expires_in", "scope"}
        assert second["access_token"] != first["access_token"] and second["refresh_token"] != first["refresh_token"]
        assert second["id_token"] == second["access_token"] and second["scope"] == first["scope"]
        old, new = await row(db, first["access_token"]), await row(db, second["access_token"])
        # The stack has a master key: the session_key is kept sealed (0006), under the family as AAD.
        assert new["family_id"] == old["family_id"] and new["session_key"] == old["session_key"] == ""
        assert new["session_key_sealed"] == old["session_key_sealed"] is not None
        assert old["revoked_at"] is not None and old["replaced_by"] == new["id"]
        assert claims_of(second["access_token"])["sub"] == claims_of(first["access_token"])["sub"]
        await api(session, stack, "GET", "/api/get-account", status=401, token=first["access_token"])
        await account(session, stack, second["access_token"])

    async def test_replay_revokes_the_family(self, session, stack, db):
        """A refresh token used twice: invalid_grant, and every token of that login (the newest too) is revoked."""
        first = await login(session, stack)
        second = await refresh(session, stack, first["refresh_token"])
        # Past the few seconds in which a second use counts as a concurrent refresh of the same client.
        await db.execute(
            "UPDATE tokens SET revoked_at = now() - interval '1 minute' WHERE id = $1::uuid",
            claims_of(first["access_token"])["jti"],
        )
        replay = await refresh(session, stack, first["refresh_token"], status=400)
        assert replay["error"] == "invalid_grant" and "already used" in replay["error_description"]
        await api(session, stack, "GET", "/api/get-account", status=401, token=second["access_token"])
        assert (await refresh(session, stack, second["refresh_token"], status=400))["error"] == "invalid_grant"

    async def test_concurrent_refreshes_keep_the_winner(self, session, stack):
        """Two refreshes of one token at once: one gets the new pair, the other invalid_grant, and the pair the
        winner got stays live (a double refresh is not treated as a stolen token)."""
        first = await login(session, stack)
        base = {
            "grant_type": "refresh_token",
            "client_id": stack.demo["clientId"],
            "refresh_token": first["refresh_token"],
        }

        async def attempt() -> tuple[int, Any]:
            async with session.post(stack.gateway + REFRESH_PATH, data=base) as resp:
                return resp.status, await resp.json()

        results = sorted(await asyncio.gather(attempt(), attempt()), key=lambda r: r[0])
        assert [status for status, _ in results] == [200, 400], results
        assert "just used" in results[1][1]["error_description"]
        await account(session, stack, results[0][1]["access_token"])

    async def test_client_checks(self, session, stack):
        """Another application's client_id: invalid_grant; a client secret, when sent, must be right (401)."""
        first = await login(session, stack)
        other = stack.admin("create-app", "--org", "demo", "--name", f"refresh-{secrets.token_hex(3)}")
        refused = await refresh(session, stack, first["refresh_token"], status=400, client_id=other["clientId"])
        assert refused["error"] == "invalid_grant"
        wrong = await refresh(session, stack, first["refresh_token"], status=401, client_secret="0" * 40)
        assert wrong["error"] == "invalid_client"
        await refresh(session, stack, first["refresh_token"], client_secret=stack.demo["clientSecret"])

    async def test_basic_client_authentication(self, session, stack):
        """A confidential client may authenticate with HTTP Basic instead of form fields."""
        first = await login(session, stack)
        form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        headers = basic(stack.demo["clientId"], stack.demo["clientSecret"])
        await oauth_post(session, stack, REFRESH_PATH, form, headers=headers)

    async def test_bad_requests(self, session, stack):
        """Wrong grant_type, missing parameters, an access token, garbage, and a widened scope are OAuth errors."""
        first = await login(session, stack)
        cases = [
            (REFRESH_PATH, {"grant_type": "password"}, 400, "unsupported_grant_type"),
            (REFRESH_PATH, {"client_id": ""}, 401, "invalid_client"),
            (REFRESH_PATH, {"refresh_token": ""}, 400, "invalid_request"),
            (REFRESH_PATH, {"refresh_token": first["access_token"]}, 400, "invalid_grant"),
            (REFRESH_PATH, {"refresh_token": "garbage"}, 400, "invalid_grant"),
            (TOKEN_PATH, {"scope": "profile email"}, 400, "invalid_scope"),
        ]
        for path, override, status, error in cases:
            body = await refresh(session, stack, first["refresh_token"], path=path, status=status, **override)
            assert body["error"] == error, (override, body)
        await refresh(session, stack, first["refresh_token"], scope="profile")


class TestLogout:
    @pytest.mark.parametrize("method", ["POST", "GET"])
    async def test_bearer_logout_revokes_the_login(self, session, stack, method):
        """Logout with a bearer token revokes it and its refresh token (unlike Casdoor); a second logout is ok."""
        first = await login(session, stack)
        body = await api(session, stack, method, "/api/logout", token=first["access_token"])
        name = claims_of(first["access_token"])["name"]
        assert body["data"] == f"demo/{name}"
        await api(session, stack, "GET", "/api/get-account", status=401, token=first["access_token"])
        assert (await refresh(session, stack, first["refresh_token"], status=400))["error"] == "invalid_grant"
        assert await introspect(session, stack, first["access_token"]) == {"active": False}
        await api(session, stack, method, "/api/logout", token=first["access_token"])

    async def test_id_token_hint(self, session, stack):
        """Casdoor's ``id_token_hint`` (query or form) names the token to revoke, without a bearer header."""
        first, second = await login(session, stack), await login(session, stack)
        await api(session, stack, "GET", "/api/logout", params={"id_token_hint": first["access_token"]})
        await api(session, stack, "POST", "/api/logout", data={"id_token_hint": second["access_token"]})
        for tokens in (first, second):
            await api(session, stack, "GET", "/api/get-account", status=401, token=tokens["access_token"])

    async def test_logout_after_refresh_ends_the_chain(self, session, stack):
        """Logging out with the newest access token also kills the refresh token it came with."""
        first = await login(session, stack)
        second = await refresh(session, stack, first["refresh_token"])
        await api(session, stack, "POST", "/api/logout", token=second["access_token"])
        assert (await refresh(session, stack, second["refresh_token"], status=400))["error"] == "invalid_grant"

    async def test_logout_errors(self, session, stack):
        """No token is 401; a token minidoor never issued is 401; client credentials alone cannot log out."""
        await api(session, stack, "POST", "/api/logout", status=401)
        await api(session, stack, "POST", "/api/logout", status=401, headers=bearer("not-a-token"))
        params = {"clientId": stack.demo["clientId"], "clientSecret": stack.demo["clientSecret"]}
        body = await api(session, stack, "POST", "/api/logout", status=401, params=params)
        assert "access token" in body["msg"]


class TestRevocationEverywhere:
    async def test_rfc7009_revocation_applies_to_the_account_api(self, session, stack):
        """A token revoked at /api/login/oauth/revoke is refused by the account API on the next call."""
        first = await login(session, stack)
        await account(session, stack, first["access_token"])
        await revoke(session, stack, first["access_token"])
        await api(session, stack, "GET", "/api/get-account", status=401, token=first["access_token"])

    async def test_every_gateway_replica_refuses_at_once(self, session, stack):
        """A second gateway process on the same user store and Redis refuses a token logged out through the first,
        on its very next call: every replica asks the user store, which decides from the token's row."""
        store = next(p for p in stack.descendants() if "user_store" in p.cmdline())
        port = free_port()
        env = {
            **stack.env,
            "GATEWAY_PORT": str(port),
            "INTERNAL_TOKEN": store.environ()["INTERNAL_TOKEN"],
            "USER_STORE_URL": f"http://127.0.0.1:{stack.user_store_port}",
            "ISSUER": stack.gateway,
        }
        replica = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", cwd=ROOT, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}/api/get-account"
            first = await login(session, stack)
            await eventually(lambda: _answers(session, url), 30, "the replica answering")
            async with session.get(url, headers=bearer(first["access_token"])) as resp:
                assert resp.status == 200, await resp.text()
            await api(session, stack, "POST", "/api/logout", token=first["access_token"])
            async with session.get(url, headers=bearer(first["access_token"])) as resp:
                assert resp.status == 401, await resp.text()
        finally:
            replica.terminate()
            await asyncio.wait_for(replica.wait(), 30)


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as resp:
            return resp.status == 401
    except aiohttp.ClientConnectionError:
        return False
