"""RFC 7662 introspection and RFC 7009 revocation at the gateway, end to end through the real stack."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
import jwt
import pytest

from tests.oauth_helpers import basic, claims_of, introspect, kid_of, make_app, revoke, stack_login, unsigned_token
from tests.stack import Stack

INTROSPECTION_FIELDS = {
    "active", "scope", "client_id", "username", "token_type", "exp", "iat", "nbf", "sub", "aud", "iss", "jti",
    "token_use",
}  # fmt: skip


@pytest.fixture(scope="module")
def other_app(stack: Stack) -> dict[str, str]:
    """A second application of the demo organization, with its own client credentials and mini program."""
    return make_app(stack, "other-app")


class TestClientAuthentication:
    async def test_basic_auth(self, session, stack):
        """HTTP Basic with the application's client id and secret is accepted."""
        token = (await stack_login(session, stack, "o-basic"))["access_token"]
        assert (await introspect(session, stack, token))["active"] is True

    async def test_form_credentials(self, session, stack):
        """client_id and client_secret as form fields are accepted too."""
        token = (await stack_login(session, stack, "o-form"))["access_token"]
        body = await introspect(
            session, stack, token, client_id=stack.demo["clientId"], client_secret=stack.demo["clientSecret"]
        )
        assert body["active"] is True

    @pytest.mark.parametrize("form", [{}, {"client_id": "x"}, {"client_secret": "y"}])
    async def test_missing_credentials_is_400(self, session, stack, form):
        """Without complete client credentials the answer is 400 invalid_request, whatever the token."""
        async with session.post(stack.gateway + "/api/login/oauth/introspect", data={"token": "t", **form}) as resp:
            body = await resp.json()
            assert resp.status == 400, body
        assert body["error"] == "invalid_request"

    async def test_wrong_secret_is_401(self, session, stack):
        """A wrong secret is 401 invalid_client with Casdoor's message and a Basic challenge."""
        auth = basic(stack.demo["clientId"], "0" * 40)
        async with session.post(
            stack.gateway + "/api/login/oauth/introspect", data={"token": "t"}, headers=auth
        ) as resp:
            body = await resp.json()
            assert resp.status == 401, body
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="OAuth2"'
        assert body == {"error": "invalid_client", "error_description": "Invalid application or wrong clientSecret"}

    async def test_unknown_client_is_401(self, session, stack):
        """An unknown client id is refused like a wrong secret."""
        body = await introspect(session, stack, "t", auth=basic("f" * 20, "0" * 40), status=401)
        assert body["error"] == "invalid_client"

    async def test_missing_token_is_400(self, session, stack):
        """RFC 7662 requires the token parameter."""
        body = await introspect(session, stack, "", status=400)
        assert body["error"] == "invalid_request"


class TestActive:
    async def test_active_access_token(self, session, stack):
        """A live access token answers every RFC 7662 field, consistent with its claims."""
        token = (await stack_login(session, stack, "o-active", username="ada"))["access_token"]
        body = await introspect(session, stack, token, token_type_hint="access_token")
        claims = claims_of(token)
        assert set(body) == INTROSPECTION_FIELDS
        assert body["active"] is True
        assert body["client_id"] == stack.demo["clientId"]
        assert body["username"] == "ada"
        assert body["token_type"] == "Bearer"
        assert body["scope"] == claims["scope"] == "profile"
        assert (body["exp"], body["iat"], body["nbf"]) == (claims["exp"], claims["iat"], claims["nbf"])
        assert (body["sub"], body["jti"], body["iss"]) == (claims["sub"], claims["jti"], stack.gateway)
        assert body["aud"] == [stack.demo["clientId"]]
        assert body["token_use"] == "access"

    async def test_es256_access_token(self, session, stack):
        """An ES256 application's access token answers the same fields; to another application it is inactive."""
        app = make_app(stack, "introspect-es256", alg="ES256")
        token = (await stack_login(session, stack, "o-es", client_id=app["clientId"], appid=app["appid"]))[
            "access_token"
        ]
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        body = await introspect(session, stack, token, auth=basic(app["clientId"], app["clientSecret"]))
        claims = claims_of(token)
        assert set(body) == INTROSPECTION_FIELDS
        assert (body["active"], body["client_id"], body["aud"]) == (True, app["clientId"], [app["clientId"]])
        assert (body["sub"], body["jti"], body["exp"]) == (claims["sub"], claims["jti"], claims["exp"])
        assert (await introspect(session, stack, token)) == {"active": False}

    async def test_hint_decides_the_kind(self, session, stack):
        """token_type_hint is honoured: a refresh token is inactive where an access token is expected, and the
        other way round; without a hint either kind is active."""
        tokens = await stack_login(session, stack, "o-hint")
        access, refresh = tokens["access_token"], tokens["refresh_token"]
        assert (await introspect(session, stack, refresh, token_type_hint="access_token")) == {"active": False}
        assert (await introspect(session, stack, access, token_type_hint="refresh_token")) == {"active": False}
        assert (await introspect(session, stack, refresh, token_type_hint="refresh-token"))["active"] is True
        assert (await introspect(session, stack, access, token_type_hint="access-token"))["active"] is True
        assert (await introspect(session, stack, refresh))["active"] is True
        assert (await introspect(session, stack, refresh, token_type_hint="nonsense"))["active"] is True

    async def test_token_use_tells_the_kind_without_a_hint(self, session, stack):
        """Without a hint both kinds are active, so ``token_use`` is what lets a resource server refuse a refresh
        token presented as an access token."""
        tokens = await stack_login(session, stack, "o-token-use")
        access = await introspect(session, stack, tokens["access_token"])
        refresh = await introspect(session, stack, tokens["refresh_token"])
        assert (access["active"], access["token_use"]) == (True, "access")
        assert (refresh["active"], refresh["token_use"]) == (True, "refresh")
        assert access["token_type"] == refresh["token_type"] == "Bearer"


class TestInactive:
    async def test_malformed_and_garbage(self, session, stack):
        """Garbage, a truncated JWT and an oversized string are inactive with HTTP 200, not an error."""
        token = (await stack_login(session, stack, "o-garbage"))["access_token"]
        for candidate in ["x", "a.b.c", token[:-10], token + "x", "e" * 20_000]:
            assert (await introspect(session, stack, candidate)) == {"active": False}, candidate[:40]

    async def test_forged_tokens(self, session, stack):
        """A token re-signed with another key under our kid, an unsigned one and a tampered one are inactive."""
        token = (await stack_login(session, stack, "o-forged"))["access_token"]
        claims = claims_of(token)
        from cryptography.hazmat.primitives.asymmetric import rsa

        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        resigned = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": kid_of(token)})
        unsigned = unsigned_token(claims, kid_of(token))
        header, payload, signature = token.split(".")
        changed = {**claims, "sub": "00000000-0000-0000-0000-000000000000"}
        tampered_payload = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
        tampered = f"{header}.{tampered_payload}.{signature}"
        for forged in (resigned, unsigned, tampered):
            assert (await introspect(session, stack, forged)) == {"active": False}

    async def test_expired(self, session, stack):
        """A token past its exp is inactive."""
        short = make_app(stack, "short-lived-app", expire_in_hours=0.0001)  # int(0.36 s) = 0: expired when minted
        token = await stack_login(session, stack, "o-expired", client_id=short["clientId"], appid=short["appid"])
        assert token["expires_in"] == 0
        auth = basic(short["clientId"], short["clientSecret"])
        assert (await introspect(session, stack, token["access_token"], auth=auth)) == {"active": False}

    async def test_revoked_row_is_inactive_at_once(self, session, stack):
        """After RFC 7009 revocation (a logout) the very next introspection says inactive."""
        token = (await stack_login(session, stack, "o-logout"))["access_token"]
        assert (await introspect(session, stack, token))["active"] is True
        started = time.monotonic()
        await revoke(session, stack, token)
        assert (await introspect(session, stack, token)) == {"active": False}
        assert time.monotonic() - started < 5

    @pytest.mark.parametrize("flag", ["is_forbidden", "is_deleted"])
    async def test_forbidden_or_deleted_user(self, session, stack, db, flag):
        """Tokens of a forbidden or deleted user are inactive while the flag is set."""
        token = (await stack_login(session, stack, f"o-{flag}"))["access_token"]
        user_id = claims_of(token)["sub"]
        await db.execute(f"UPDATE users SET {flag} = true WHERE id = $1", user_id)
        try:
            assert (await introspect(session, stack, token)) == {"active": False}
        finally:
            await db.execute(f"UPDATE users SET {flag} = false WHERE id = $1", user_id)
        assert (await introspect(session, stack, token))["active"] is True

    async def test_another_applications_token(self, session, stack, other_app):
        """An application cannot introspect another application's tokens: they are inactive for it."""
        token = (await stack_login(session, stack, "o-cross"))["access_token"]
        auth = basic(other_app["clientId"], other_app["clientSecret"])
        assert (await introspect(session, stack, token, auth=auth)) == {"active": False}


class TestRevocation:
    async def test_unknown_token_is_200(self, session, stack):
        """RFC 7009: revoking a token the server does not know still answers 200."""
        assert await revoke(session, stack, "not-a-token") == ""

    async def test_client_errors(self, session, stack):
        """Revocation authenticates the client like introspection does."""
        async with session.post(stack.gateway + "/api/login/oauth/revoke", data={"token": "t"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "invalid_request"
        async with session.post(
            stack.gateway + "/api/login/oauth/revoke", data={"token": "t"}, headers=basic(stack.demo["clientId"], "x")
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "invalid_client"

    async def test_another_applications_token_is_refused(self, session, stack, other_app):
        """A client may not revoke another application's token: 400 unauthorized_client, and it stays live."""
        token = (await stack_login(session, stack, "o-not-yours"))["access_token"]
        await revoke(session, stack, token, auth=basic(other_app["clientId"], other_app["clientSecret"]), status=400)
        assert (await introspect(session, stack, token))["active"] is True

    async def test_refresh_token_revokes_both(self, session, stack):
        """Revoking the refresh token also ends the access token minted with it (and the other way round)."""
        first = await stack_login(session, stack, "o-refresh-revoke")
        await revoke(session, stack, first["refresh_token"], token_type_hint="refresh_token")
        assert (await introspect(session, stack, first["access_token"])) == {"active": False}
        second = await stack_login(session, stack, "o-refresh-revoke")
        await revoke(session, stack, second["access_token"])
        assert (await introspect(session, stack, second["refresh_token"])) == {"active": False}


class TestPlainHttpClient:
    async def test_rfc7662_client_with_urllib(self, stack):
        """A generic RFC 7662 client (urllib, Basic auth, form body, Accept JSON) works unchanged."""
        async with aiohttp.ClientSession() as session:
            token = (await stack_login(session, stack, "o-urllib"))["access_token"]

        def call() -> tuple[int, dict[str, Any]]:
            credentials = f"{stack.demo['clientId']}:{stack.demo['clientSecret']}".encode()
            request = urllib.request.Request(
                stack.gateway + "/api/login/oauth/introspect",
                data=urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode(),
                headers={
                    "Authorization": "Basic " + base64.b64encode(credentials).decode(),
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())

        status, body = await asyncio.to_thread(call)
        assert status == 200
        assert body["active"] is True
        assert body["sub"] == claims_of(token)["sub"]
