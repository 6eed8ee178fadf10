"""RFC 7662 introspection and RFC 7009 revocation at the gateway, end to end through the real stack."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from shared.config import GatewayConfig
from tests.account_helpers import app_params, update
from tests.cluster import Cluster
from tests.oauth_helpers import (
    basic,
    claims_of,
    eventually,
    introspect,
    kid_of,
    make_app,
    revoke,
    stack_login,
    unsigned_token,
)
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

    @pytest.mark.parametrize("field", ["isForbidden", "isDeleted"])
    async def test_forbidden_or_deleted_user(self, session, stack, field):
        """A user made forbidden or deleted through update-user has its tokens revoked with the change: inactive
        within a second at every gateway, and still inactive once the flag is cleared again (as in Casdoor)."""
        token = (await stack_login(session, stack, f"o-{field}"))["access_token"]
        target = f"demo/{claims_of(token)['name']}"
        assert (await introspect(session, stack, token))["active"] is True
        await update(session, stack, {field: True}, id=target, **app_params(stack))
        await eventually(_inactive(session, stack, token), 1.0, "the user's token inactive", interval=0.02)
        await update(session, stack, {field: False}, id=target, **app_params(stack))
        assert (await introspect(session, stack, token)) == {"active": False}

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


def _inactive(session: aiohttp.ClientSession, stack: Stack, token: str, **kwargs: Any):
    async def check() -> bool:
        return (await introspect(session, stack, token, **kwargs)) == {"active": False}

    return check


def _store_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.user_store_port}/internal/tokens/introspect"


async def store_introspect(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    *,
    headers: dict[str, str] | None = None,
    status: int = 200,
    **form: str,
) -> dict[str, Any]:
    """POST the user store's introspection as a service on the private network does: an RFC 7662 form."""
    async with session.post(url, data={"token": token, **form}, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return dict(body)


class TestUserStoreEntryPoint:
    """``POST /internal/tokens/introspect`` on the user store, for internal services, with client credentials."""

    async def test_client_credentials_without_the_internal_token(self, session, stack):
        """HTTP Basic or form credentials of the application, no internal token: the gateway's answer."""
        token = (await stack_login(session, stack, "o-store-route", username="grace"))["access_token"]
        auth = basic(stack.demo["clientId"], stack.demo["clientSecret"])
        direct = await store_introspect(session, _store_url(stack), token, headers=auth, token_type_hint="access_token")
        assert direct == await introspect(session, stack, token, token_type_hint="access_token")
        assert direct["active"] is True and direct["username"] == "grace"
        credentials = {"client_id": stack.demo["clientId"], "client_secret": stack.demo["clientSecret"]}
        assert (await store_introspect(session, _store_url(stack), token, **credentials))["active"] is True

    async def test_client_errors(self, session, stack):
        """No client credentials: 400 invalid_request; a wrong secret: 401 invalid_client; no token: 400; a body
        that is neither a form nor JSON: 415."""
        url = _store_url(stack)
        assert (await store_introspect(session, url, "t", status=400))["error"] == "invalid_request"
        wrong = basic(stack.demo["clientId"], "0" * 40)
        assert (await store_introspect(session, url, "t", headers=wrong, status=401))["error"] == "invalid_client"
        auth = basic(stack.demo["clientId"], stack.demo["clientSecret"])
        assert (await store_introspect(session, url, "", headers=auth, status=400))["error"] == "invalid_request"
        async with session.post(url, data=b"token=t", headers={**auth, "Content-Type": "text/plain"}) as resp:
            assert resp.status == 415

    @pytest.mark.parametrize("flag", ["is_forbidden", "is_deleted"])
    async def test_flags_in_the_database_are_read_at_once(self, session, stack, db, flag):
        """The store is the authority: a user flag set in PostgreSQL directly (no update-user, so nothing is
        revoked or pushed to the gateways) makes the user's tokens inactive there at once, active once cleared."""
        token = (await stack_login(session, stack, f"o-db-{flag}"))["access_token"]
        user_id = claims_of(token)["sub"]
        auth = basic(stack.demo["clientId"], stack.demo["clientSecret"])
        await db.execute(f"UPDATE users SET {flag} = true WHERE id = $1", user_id)
        try:
            assert (await store_introspect(session, _store_url(stack), token, headers=auth)) == {"active": False}
        finally:
            await db.execute(f"UPDATE users SET {flag} = false WHERE id = $1", user_id)
        assert (await store_introspect(session, _store_url(stack), token, headers=auth))["active"] is True


CLIENT_SECRET_TTL = next(f.default for f in msgspec.structs.fields(GatewayConfig) if f.name == "client_secret_ttl")


class TestClientSecretCache:
    async def test_a_wrong_secret_is_never_the_cached_one(self, session, stack):
        """Once the right secret is cached, a wrong one for the same client is still 401, every time."""
        token = (await stack_login(session, stack, "o-cached-secret"))["access_token"]
        for _ in range(2):
            assert (await introspect(session, stack, token))["active"] is True
        wrong = basic(stack.demo["clientId"], stack.demo["clientSecret"][:-1] + "x")
        for _ in range(3):
            assert (await introspect(session, stack, token, auth=wrong, status=401))["error"] == "invalid_client"
        assert (await introspect(session, stack, token))["active"] is True

    async def test_rotated_secret_is_refused_within_the_ttl(self, session, stack):
        """After rotate-secret the old secret answers 401 within CLIENT_SECRET_TTL, the new one works at once; and
        a secret the store confirms replaces the cached one, so the one before it is refused at once."""
        app = make_app(stack, "rotating-app")
        login = await stack_login(session, stack, "o-rotating", client_id=app["clientId"], appid=app["appid"])
        token = login["access_token"]
        old = basic(app["clientId"], app["clientSecret"])
        for _ in range(2):  # the store confirms the secret, then the gateway answers alone
            assert (await introspect(session, stack, token, auth=old))["active"] is True
        second = stack.admin("rotate-secret", "--app", "rotating-app")["clientSecret"]
        took = await eventually(_refused(session, stack, token, old), CLIENT_SECRET_TTL + 5, "old secret refused")
        assert took <= CLIENT_SECRET_TTL + 0.5, took
        new = basic(app["clientId"], second)
        assert (await introspect(session, stack, token, auth=new))["active"] is True
        third = stack.admin("rotate-secret", "--app", "rotating-app")["clientSecret"]
        assert (await introspect(session, stack, token, auth=basic(app["clientId"], third)))["active"] is True
        assert (await introspect(session, stack, token, auth=new, status=401))["error"] == "invalid_client"


def _refused(session: aiohttp.ClientSession, stack: Stack, token: str, auth: dict[str, str]):
    async def check() -> bool:
        async with session.post(
            stack.gateway + "/api/login/oauth/introspect", data={"token": token}, headers=auth
        ) as resp:
            return resp.status == 401

    return check


@pytest.fixture(scope="module", name="cluster")
def _cluster(open_tmp: Callable[[str], Path]) -> Iterator[Cluster]:
    """Two gateway processes, each with its own verifier and revocation feed, and a Redis and a PostgreSQL the
    tests stop and start."""
    cluster = Cluster(open_tmp("replicas"), workers=1, gateways=2)
    try:
        yield cluster.start()
    finally:
        cluster.shutdown()


async def cluster_login(http: aiohttp.ClientSession, cluster: Cluster, openid: str) -> dict[str, Any]:
    async with http.post(
        cluster.sandbox_url + "/sandbox/login", json={"appid": cluster.demo_appid, "openid": openid}
    ) as resp:
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": cluster.demo_client_id, "code": code}
    async with http.post(cluster.gateway_url(0) + "/api/login/oauth/access_token", data=form) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


def _demo_auth(cluster: Cluster) -> dict[str, str]:
    assert cluster.demo is not None
    return basic(cluster.demo.client_id, cluster.demo.client_secret)


async def gateway_introspect(
    http: aiohttp.ClientSession, cluster: Cluster, i: int, token: str, *, status: int = 200
) -> dict[str, Any]:
    url = cluster.gateway_url(i) + "/api/login/oauth/introspect"
    async with http.post(url, data={"token": token}, headers=_demo_auth(cluster)) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return dict(body)


async def answered_by(http: aiohttp.ClientSession, cluster: Cluster, i: int) -> dict[str, float]:
    """The gateway's ``minidoor_gateway_introspections_total`` by who answered."""
    headers = {"Authorization": f"Bearer {cluster.internal_token}"}
    async with http.get(cluster.gateway_url(i) + "/metrics", headers=headers) as resp:
        text = await resp.text()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "minidoor_gateway_introspections_total":
                counts[sample.labels["answered_by"]] = sample.value
    return counts


class TestReplicas:
    async def test_revocation_reaches_every_gateway_within_a_second(self, cluster, session):
        """Two gateways answer a live token alone (no user-store call); revoked at one, it is inactive there at
        once and at the other within a second."""
        token = (await cluster_login(session, cluster, "o-replicas"))["access_token"]
        for i in (0, 1):

            async def answered_alone(i: int = i) -> bool:
                # Each gateway answers alone once its feed is fresh: on a loaded machine a heartbeat may come late
                # (the gateway then rightly asks the store), so this waits for two answers of its own in a row.
                before = await answered_by(session, cluster, i)
                for _ in range(2):
                    assert (await gateway_introspect(session, cluster, i, token))["active"] is True
                after = await answered_by(session, cluster, i)
                return after.get("gateway", 0) - before.get("gateway", 0) == 2

            await eventually(answered_alone, 10.0, f"gateway {i} answering introspection alone")
        url = cluster.gateway_url(0) + "/api/login/oauth/revoke"
        async with session.post(url, data={"token": token}, headers=_demo_auth(cluster)) as resp:
            assert resp.status == 200
        revoked_at = time.monotonic()
        assert (await gateway_introspect(session, cluster, 0, token)) == {"active": False}

        async def inactive_at_the_other() -> bool:
            return (await gateway_introspect(session, cluster, 1, token)) == {"active": False}

        await eventually(inactive_at_the_other, 1.0, "inactive at the second gateway", interval=0.01)
        assert time.monotonic() - revoked_at < 1.0

    async def test_lost_feed_asks_the_user_store(self, cluster, session):
        """With Redis gone no gateway answers from its own denylist: introspection goes to the user store (which
        sees a revocation written to PostgreSQL alone), and is 503 when PostgreSQL is gone too, never a stale
        active. Once Redis is back, the gateways answer alone again."""
        live = (await cluster_login(session, cluster, "o-feed-live"))["access_token"]
        probe = (await cluster_login(session, cluster, "o-feed-probe"))["access_token"]
        for i in (0, 1):
            for token in (live, probe):
                assert (await gateway_introspect(session, cluster, i, token))["active"] is True
        redis = aioredis.Redis.from_url(cluster.redis_url)
        outage = asyncio.create_task(cluster.restart_redis(down_for=6.0))
        try:
            await eventually(_redis_gone(redis), 10, "Redis stopped")
            # A revocation no feed carries: only the authority can know it.
            conn = await asyncpg.connect(cluster.database_url)
            try:
                await conn.execute("UPDATE tokens SET revoked_at = now() WHERE id = $1", claims_of(probe)["jti"])
            finally:
                await conn.close()
            for i in (0, 1):
                assert (await gateway_introspect(session, cluster, i, probe)) == {"active": False}
                assert (await gateway_introspect(session, cluster, i, live))["active"] is True
            await cluster.stop_postgres()
            try:
                for i in (0, 1):
                    body = await gateway_introspect(session, cluster, i, live, status=503)
                    assert body["error"] == "temporarily_unavailable", body
            finally:
                await cluster.start_postgres()
        finally:
            await outage
            await redis.aclose()
        await asyncio.gather(*(gateway.ready(timeout=20) for gateway in cluster.gateways))

        for i in (0, 1):
            await eventually(_answered_alone(session, cluster, i, live), 20, f"gateway {i} answering alone again")

    async def test_internal_token_alone_is_refused(self, cluster, session):
        """The store's introspection takes client credentials, never the internal token: with it alone the answer
        is 400 invalid_request, form or JSON; the other internal routes still want the internal token."""
        token = (await cluster_login(session, cluster, "o-internal-token"))["access_token"]
        url = cluster.user_store_url + "/internal/tokens/introspect"
        internal = {"Authorization": f"Bearer {cluster.internal_token}"}
        body = await store_introspect(session, url, token, headers=internal, status=400)
        assert body["error"] == "invalid_request"
        payload = {"client_id": "", "client_secret": "", "token": token}
        async with session.post(url, json=payload, headers=internal) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
        assert (await store_introspect(session, url, token, headers=_demo_auth(cluster)))["active"] is True
        revoke_url = cluster.user_store_url + "/internal/tokens/revoke"
        assert cluster.demo is not None
        payload = {"client_id": cluster.demo.client_id, "client_secret": cluster.demo.client_secret, "token": token}
        async with session.post(revoke_url, json=payload, headers=_demo_auth(cluster)) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"


def _answered_alone(http: aiohttp.ClientSession, cluster: Cluster, i: int, token: str):
    async def check() -> bool:
        before = (await answered_by(http, cluster, i)).get("gateway", 0)
        assert (await gateway_introspect(http, cluster, i, token))["active"] is True
        return (await answered_by(http, cluster, i)).get("gateway", 0) > before

    return check


def _redis_gone(redis: aioredis.Redis):
    async def check() -> bool:
        try:
            await redis.ping()
        except (aioredis.RedisError, OSError):
            return True
        return False

    return check
