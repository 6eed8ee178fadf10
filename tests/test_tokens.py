"""``user_store.tokens``: the token check and the revocation API other user-store code builds on, against a real
PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.config import Secret, UserStoreConfig
from shared.errors import BadRequest, InvalidGrant, Unauthorized, Unavailable
from shared.messages import RefreshRequest, TokensRevoked, token_event_decoder
from shared.redis_keys import RedisKeys
from tests.conftest import SHOP_APPID as APPID
from tests.oauth_helpers import eventually, hs256_token, unsigned_token
from user_store.app import create_app
from user_store.appkeys import PG_POOL, REVOCATIONS, SIGNER
from user_store.db import transaction
from user_store.pruning import prune
from user_store.queries.tokens import delete_expired
from user_store.refresh import refresh_tokens
from user_store.revocations import Revocations
from user_store.signing_keys.signer import Subject
from user_store.tokens import authenticate_client, inspect_token, revoke_family, revoke_token, revoke_user_tokens

TOKEN = "t" * 32
ISSUER = "http://issuer.test"


@pytest.fixture(name="client")
async def _client(pg_url: str, redis_url: str, key_prefix: str, redis_client: aioredis.Redis):
    config = UserStoreConfig(
        internal_token=Secret(TOKEN),
        database_url=Secret(pg_url),
        issuer=ISSUER,
        redis_url=redis_url,
        key_prefix=key_prefix,
    )
    async with TestClient(TestServer(create_app(config))) as client:
        yield client


async def login(client, shop, openid: str = "openid-1") -> dict[str, Any]:
    """A login through the internal API; returns the token wrapper plus ``user_id``."""
    body = {"client_id": shop.client_id, "appid": APPID, "openid": openid, "session_key": "sk"}
    async with client.post(
        "/internal/logins/wechat-miniprogram", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        result = await resp.json()
        assert resp.status == 200, result
    return {**result["token"], "user_id": result["user_id"]}


async def inspect(client, token: str, expected: Any = None, **kwargs: Any):
    async with transaction(client.app[PG_POOL]) as conn:
        return await inspect_token(conn, client.app[SIGNER], token, expected, **kwargs)


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


class TestInspectToken:
    async def test_live_access_token(self, client, shop):
        """A fresh access token is live; its info carries the row, the user and the verified claims."""
        tokens = await login(client, shop)
        info = await inspect(client, tokens["access_token"], "access")
        claims = claims_of(tokens["access_token"])
        assert info is not None
        assert (info.kind, info.token_id, info.user_id) == ("access", claims["jti"], tokens["user_id"])
        assert (info.client_id, info.organization, info.user_name) == (shop.client_id, "acme", "wechat-openid-1")
        assert (info.expires_at, info.issuer, info.audience) == (claims["exp"], ISSUER, (shop.client_id,))
        assert info.kid == client.app[SIGNER].current["RS256"].kid

    async def test_refresh_where_access_is_expected(self, client, shop):
        """The refresh token is not live where an access token is expected, and the other way round."""
        tokens = await login(client, shop)
        assert await inspect(client, tokens["refresh_token"], "access") is None
        assert await inspect(client, tokens["access_token"], "refresh") is None
        refresh = await inspect(client, tokens["refresh_token"], "refresh")
        assert refresh is not None and refresh.kind == "refresh"
        assert (await inspect(client, tokens["refresh_token"])) is not None

    async def test_expired_jwt(self, client, conn, shop):
        """A token whose exp has passed is not live, although its row says otherwise."""
        signer = client.app[SIGNER]
        user = await login(client, shop, "o-old")
        token_id, past = uuid.uuid4(), int(time.time()) - 7200
        subject = Subject(
            user_id=user["user_id"], user_name="u", display_name="", avatar="", organization="acme",
            client_id=shop.client_id, expire_in_hours=1, refresh_expire_in_hours=0,
        )  # fmt: skip
        minted = signer.mint(subject, token_id=str(token_id), now=past)
        await conn.execute(
            """
            INSERT INTO tokens (id, family_id, application_id, user_id, access_hash, refresh_hash, scope, expires_at,
                                refresh_expires_at)
            SELECT $1, $1, id, $2, $3, $4, 'profile', now() + interval '1 hour', now() + interval '1 hour'
            FROM applications
            """,
            token_id,
            uuid.UUID(user["user_id"]),
            minted.access_hash,
            minted.refresh_hash,
        )
        assert await inspect(client, minted.response.access_token) is None

    async def test_expired_row(self, client, conn, shop):
        """A row past its expiry ends the token even while the JWT's exp is ahead."""
        tokens = await login(client, shop)
        await conn.execute("UPDATE tokens SET expires_at = now() - interval '1 second'")
        assert await inspect(client, tokens["access_token"]) is None
        assert await inspect(client, tokens["refresh_token"]) is not None

    async def test_prune_takes_rows_past_both_expiries_and_the_grace(self, client, conn, shop):
        """The background prune deletes a row only once its access and refresh tokens both expired over the grace
        ago: a live refresh token keeps its row (and so its family's replay check), however old the access token."""
        dead = await login(client, shop, "openid-dead")
        recent = await login(client, shop, "openid-recent")
        refreshable = await login(client, shop, "openid-refreshable")
        past = "now() - interval '2 hours'"
        for tokens, expiry, refresh_expiry in (
            (dead, past, past),
            (recent, "now() - interval '10 minutes'", "now() - interval '10 minutes'"),
            (refreshable, past, "now() + interval '1 day'"),
        ):
            await conn.execute(
                f"UPDATE tokens SET expires_at = {expiry}, refresh_expires_at = {refresh_expiry} WHERE user_id = $1",
                uuid.UUID(tokens["user_id"]),
            )

        def delete(conn, limit):
            return delete_expired(conn, 3600, limit)

        assert await prune(client.app[PG_POOL], delete, batch=1) == 1
        left = {str(row["user_id"]) for row in await conn.fetch("SELECT user_id FROM tokens")}
        assert left == {recent["user_id"], refreshable["user_id"]}
        assert await inspect(client, refreshable["refresh_token"]) is not None
        assert await prune(client.app[PG_POOL], delete) == 0

    async def test_opaque_refresh_token_introspects_from_its_row(self, client, shop):
        """An opaque refresh token is live through its row alone; its kind, owner and expiry come from the row, and
        it is refused where an access token is expected or once its row is revoked."""
        tokens = await login(client, shop)
        info = await inspect(client, tokens["refresh_token"])
        assert info is not None and info.kind == "refresh" and info.user_id == tokens["user_id"]
        assert info.client_id == shop.client_id and info.expires_at > time.time() + 3600
        assert await inspect(client, tokens["refresh_token"], "access") is None
        last = tokens["refresh_token"][-1]
        assert await inspect(client, tokens["refresh_token"][:-1] + ("B" if last == "A" else "A")) is None
        async with transaction(client.app[PG_POOL]) as conn:
            await revoke_token(conn, client.app[REVOCATIONS], uuid.UUID(info.token_id))
        assert await inspect(client, tokens["refresh_token"]) is None

    async def test_a_jwt_refresh_token_of_an_earlier_store_still_refreshes(self, client, conn, shop):
        """Refresh tokens minted as JWTs before opaque ones keep working until they expire: the row's refresh hash is
        swapped for the hash of such a JWT, signed by the store's key with the row's jti and sub."""
        tokens = await login(client, shop)
        claims = claims_of(tokens["access_token"])
        key = client.app[SIGNER].current["RS256"]
        legacy = jwt.encode(
            {**claims, "tokenType": "refresh-token"}, key.private_key, algorithm="RS256", headers={"kid": key.kid}
        )
        await conn.execute("UPDATE tokens SET refresh_hash = sha256($1::text::bytea)", legacy)
        renewed = await refresh_tokens(
            client.app[PG_POOL],
            client.app[SIGNER],
            client.app[REVOCATIONS],
            RefreshRequest(client_id=shop.client_id, refresh_token=legacy),
        )
        assert renewed.refresh_token.startswith("mdr_")
        forged = jwt.encode(
            {**claims, "tokenType": "refresh-token", "sub": str(uuid.uuid4())},
            key.private_key,
            algorithm="RS256",
            headers={"kid": key.kid},
        )
        with pytest.raises(InvalidGrant):
            await refresh_tokens(
                client.app[PG_POOL],
                client.app[SIGNER],
                client.app[REVOCATIONS],
                RefreshRequest(client_id=shop.client_id, refresh_token=forged),
            )

    async def test_forged_and_malformed(self, client, shop):
        """Re-signed, unsigned, HS256-with-our-public-key, tampered and malformed tokens are not live."""
        token = (await login(client, shop))["access_token"]
        claims, kid = claims_of(token), jwt.get_unverified_header(token)["kid"]
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = (
            client.app[SIGNER]
            .current["RS256"]
            .public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        candidates = [
            jwt.encode(claims, other, algorithm="RS256", headers={"kid": kid}),
            unsigned_token(claims, kid),
            hs256_token(claims, kid, public_pem),
            token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
            "",
            "not.a.jwt",
            "x" * 10_000,
        ]
        for candidate in candidates:
            assert await inspect(client, candidate) is None, candidate[:60]

    @pytest.mark.parametrize("flag", ["is_forbidden", "is_deleted"])
    async def test_forbidden_or_deleted_user(self, client, conn, shop, flag):
        """A token of a forbidden or deleted user is not live."""
        tokens = await login(client, shop)
        await conn.execute(f"UPDATE users SET {flag} = true")
        assert await inspect(client, tokens["access_token"]) is None

    async def test_other_client(self, client, conn, shop):
        """``client_id`` restricts to the tokens issued to that application."""
        tokens = await login(client, shop)
        assert await inspect(client, tokens["access_token"], client_id="f" * 20) is None
        assert await inspect(client, tokens["access_token"], client_id=shop.client_id) is not None


class TestRevocation:
    async def test_revoke_token_marks_denylists_and_publishes(self, client, shop, redis_client, key_prefix):
        """revoke_token marks the row, adds its jti to the denylist until the row's last exp, and publishes it."""
        tokens = await login(client, shop)
        jti, exp = claims_of(tokens["access_token"])["jti"], claims_of(tokens["access_token"])["exp"]
        keys = RedisKeys(key_prefix)
        pubsub = redis_client.pubsub()
        await pubsub.subscribe(keys.token_events)
        try:
            async with transaction(client.app[PG_POOL]) as conn:
                revoked = await revoke_token(conn, client.app[REVOCATIONS], jti)
            message = None
            deadline = time.monotonic() + 5
            while (message is None or message["type"] != "message") and time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=1.0)
        finally:
            await pubsub.aclose()
        assert [entry.jti for entry in revoked] == [jti]
        assert await inspect(client, tokens["access_token"]) is None
        assert await redis_client.zscore(keys.revoked_tokens, jti) == exp
        assert message is not None and message["type"] == "message"
        event = token_event_decoder.decode(message["data"])
        assert isinstance(event, TokensRevoked)
        assert [(entry.jti, entry.exp) for entry in event.tokens] == [(jti, exp)]

    async def test_revoke_again_is_a_no_op(self, client, shop):
        """Revoking a revoked row revokes nothing more and broadcasts nothing."""
        jti = claims_of((await login(client, shop))["access_token"])["jti"]
        async with transaction(client.app[PG_POOL]) as conn:
            assert len(await revoke_token(conn, client.app[REVOCATIONS], jti)) == 1
            assert await revoke_token(conn, client.app[REVOCATIONS], jti) == []

    async def test_family_and_user(self, client, conn, shop):
        """revoke_family ends every row of a chain; revoke_user_tokens every row of a user, and no one else's."""
        first, second = await login(client, shop, "o-a"), await login(client, shop, "o-a")
        other = await login(client, shop, "o-b")
        family = claims_of(first["access_token"])["jti"]
        await conn.execute("UPDATE tokens SET family_id = $1 WHERE user_id = $2", uuid.UUID(family),
                           uuid.UUID(first["user_id"]))  # fmt: skip
        async with transaction(client.app[PG_POOL]) as tx:
            assert len(await revoke_family(tx, client.app[REVOCATIONS], family)) == 2
        assert await inspect(client, second["access_token"]) is None
        async with transaction(client.app[PG_POOL]) as tx:
            assert await revoke_user_tokens(tx, client.app[REVOCATIONS], first["user_id"]) == []
            assert len(await revoke_user_tokens(tx, client.app[REVOCATIONS], other["user_id"])) == 1
        assert await inspect(client, other["access_token"]) is None

    async def test_family_revocation_sees_a_concurrent_refresh(self, client, conn, shop, pg_url):
        """A logout racing a refresh also revokes the row the refresh adds to the family, once it commits."""
        first, second = await login(client, shop, "o-race"), await login(client, shop, "o-race")
        old, new = claims_of(first["access_token"])["jti"], claims_of(second["access_token"])["jti"]
        family = uuid.uuid4()
        await conn.execute("UPDATE tokens SET family_id = $1 WHERE id = $2", family, uuid.UUID(old))
        # Like a refresh: lock and revoke the old row, then move the new row into the family, not yet committed.
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE tokens SET revoked_at = now() WHERE id = $1", uuid.UUID(old))
        await conn.execute("UPDATE tokens SET family_id = $1 WHERE id = $2", family, uuid.UUID(new))

        async def logout() -> list[Any]:
            async with transaction(client.app[PG_POOL]) as other:
                return await revoke_family(other, client.app[REVOCATIONS], family)

        task = asyncio.create_task(logout())
        await eventually(_blocked_by(pg_url, conn.get_server_pid()), 10, "the revocation waiting on the old row's lock")
        await tx.commit()
        revoked = await task
        assert [r.jti for r in revoked] == [new]
        assert await inspect(client, second["access_token"]) is None

    async def test_redis_down_rolls_the_revocation_back(self, client, conn, shop):
        """When the broadcast fails the caller gets Unavailable and the row stays live, so a retry can succeed."""
        tokens = await login(client, shop)
        jti = claims_of(tokens["access_token"])["jti"]
        dead = aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
        try:
            with pytest.raises(Unavailable):
                async with transaction(client.app[PG_POOL]) as tx:
                    await revoke_token(tx, Revocations(dead, RedisKeys("x")), jti)
        finally:
            await dead.aclose()
        assert await inspect(client, tokens["access_token"]) is not None

    async def test_without_redis_rows_alone_decide(self, client, shop):
        """A store without REDIS_URL still revokes rows; nothing is broadcast."""
        jti = claims_of((await login(client, shop))["access_token"])["jti"]
        async with transaction(client.app[PG_POOL]) as tx:
            assert len(await revoke_token(tx, Revocations(None, RedisKeys("x")), jti)) == 1


def _blocked_by(pg_url: str, pid: int):
    """Whether a session waits on a lock ``pid`` holds (asked on a connection of its own: a transaction sees the
    activity view as it was when the transaction started)."""

    async def check() -> bool:
        watcher = await asyncpg.connect(pg_url)
        try:
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
            return bool(await watcher.fetchval(waiting, pid))
        finally:
            await watcher.close()

    return check


class TestClientAuthentication:
    async def test_credentials(self, client, conn, shop):
        """Missing credentials are BadRequest, wrong or unknown ones Unauthorized, right ones the application."""
        for client_id, secret in [("", "x"), (shop.client_id, "")]:
            with pytest.raises(BadRequest):
                await authenticate_client(conn, client_id, secret)
        for client_id, secret in [(shop.client_id, "0" * 40), ("f" * 20, shop.client_secret)]:
            with pytest.raises(Unauthorized, match="Invalid application or wrong clientSecret"):
                await authenticate_client(conn, client_id, secret)
        row = await authenticate_client(conn, shop.client_id, shop.client_secret)
        assert row["name"] == "shop"


async def test_concurrent_inspections_share_the_pool(client, shop):
    """Many inspections at once all answer (no connection leak, no shared state between them)."""
    tokens = await login(client, shop)
    results = await asyncio.gather(*(inspect(client, tokens["access_token"]) for _ in range(30)))
    assert all(result is not None for result in results)
