"""``shared.verifier.Verifier``: local verification against a JWKS it caches, and revocations through Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import urllib.parse
import uuid
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from shared import jwtcheck
from shared.errors import InvalidToken, Unavailable
from shared.messages import RevokedToken
from shared.redis_keys import RedisKeys
from shared.verifier import Verifier, http_jwks
from tests.conftest import Clock
from tests.oauth_helpers import eventually, hs256_token, refuses, revoke, stack_login, stack_verifier, unsigned_token
from tests.stack import Stack
from user_store.revocations import Revocations

ISSUER = "http://issuer.test"
AUDIENCE = "a" * 20


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyServer:
    """A JWKS endpoint under the test's control, counting how often it is read."""

    def __init__(self) -> None:
        self.keys: dict[str, PrivateKey] = {}
        #: Each key's JWK ``alg`` member (None: left out); RS256 unless added otherwise.
        self.algs: dict[str, str | None] = {}
        self.fetches = 0
        self.failing = False

    def add(self, kid: str, alg: str = "RS256", *, advertise: bool = True) -> PrivateKey:
        """A new key: RSA 2048 for RS*, EC P-256 for ES256; ``advertise`` puts its ``alg`` in the JWKS."""
        key: PrivateKey
        if alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid], self.algs[kid] = key, alg if advertise else None
        return key

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.Response(status=503)
        jwks = []
        for kid, key in self.keys.items():
            public = key.public_key()
            jwk = (
                RSAAlgorithm.to_jwk(public, as_dict=True)
                if isinstance(public, rsa.RSAPublicKey)
                else ECAlgorithm.to_jwk(public, as_dict=True)
            )
            alg = self.algs.get(kid, "RS256")
            jwks.append({**jwk, "kid": kid, "use": "sig", **({"alg": alg} if alg else {})})
        return web.json_response({"keys": jwks})

    def token(self, kid: str, *, key: PrivateKey | None = None, alg: str = "", **claims: Any) -> str:
        """A token with ``kid`` in its header, signed by ``key`` (default: the kid's) with ``alg`` (default: the
        kid's algorithm)."""
        now = int(time.time())
        body = {
            "iss": ISSUER, "aud": [AUDIENCE], "sub": str(uuid.uuid4()), "jti": str(uuid.uuid4()), "iat": now,
            "nbf": now, "exp": now + 3600, "tokenType": "access-token", **claims,
        }  # fmt: skip
        alg = alg or self.algs.get(kid) or "RS256"
        return jwt.encode(body, key or self.keys[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture(name="keys")
async def _keys():
    server = KeyServer()
    server.add("k1")
    app = web.Application()
    app.router.add_get("/jwks", server.handle)
    async with TestServer(app) as test_server, aiohttp.ClientSession() as session:
        server.url = str(test_server.make_url("/jwks"))  # type: ignore[attr-defined]
        server.session = session  # type: ignore[attr-defined]
        yield server


def make_verifier(server: KeyServer, **kwargs: Any) -> Verifier:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "refresh_cooldown": 0.5, **kwargs}
    return Verifier(jwks=http_jwks(server.session, server.url), **options)  # type: ignore[attr-defined]


class TestChecks:
    async def test_valid_token(self, keys):
        """A token signed by a JWKS key, for our issuer and audience, verifies and yields its claims."""
        async with make_verifier(keys) as verifier:
            claims = await verifier.verify(keys.token("k1", scope="profile"))
        assert (claims["iss"], claims["aud"], claims["scope"]) == (ISSUER, [AUDIENCE], "profile")

    def test_refuses_dangerous_algorithm_lists(self):
        """A Verifier cannot be built to accept none or an HMAC algorithm."""
        for algorithms in (["none"], ["HS256"], ["RS256", "HS256"], []):
            with pytest.raises(ValueError):
                Verifier(issuer=ISSUER, audience=None, jwks=_never, algorithms=algorithms)

    async def test_alg_none_and_hs256_with_the_public_key(self, keys):
        """An unsigned token and one HMAC-signed with the public key as secret are refused."""
        public_pem = (
            keys.keys["k1"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        claims = jwt.decode(keys.token("k1"), options={"verify_signature": False})
        unsigned, hs256 = unsigned_token(claims, "k1"), hs256_token(claims, "k1", public_pem)
        async with make_verifier(keys) as verifier:
            for token in (unsigned, hs256):
                with pytest.raises(InvalidToken, match="algorithm"):
                    await verifier.verify(token)

    async def test_algorithm_outside_the_allow_list(self, keys):
        """RS512 is refused when the verifier allows RS256 only, though the key could check it."""
        async with make_verifier(keys) as verifier:
            with pytest.raises(InvalidToken, match="algorithm"):
                await verifier.verify(keys.token("k1", alg="RS512"))

    @pytest.mark.parametrize(
        ("claims", "message"),
        [
            ({"iss": "http://evil.test"}, "issuer"),
            ({"aud": ["b" * 20]}, "audience"),
            ({"exp": -60}, "expired"),
            ({"nbf": +60}, "not valid yet"),
            ({"tokenType": "refresh-token"}, "not an access-token"),
        ],
    )
    async def test_claim_checks(self, keys, claims, message):
        """Wrong issuer or audience, an expiry or nbf beyond the leeway, and a refresh token are refused."""
        async with make_verifier(keys) as verifier:
            with pytest.raises(InvalidToken, match=message):
                await verifier.verify(keys.token("k1", **_at_now(claims)))

    async def test_small_leeway(self, keys):
        """A token that expired a few seconds ago still verifies within the 10 s leeway."""
        async with make_verifier(keys) as verifier:
            await verifier.verify(keys.token("k1", exp=int(time.time()) - 3))

    async def test_forged_signature_and_garbage(self, keys):
        """A token signed by a key not in the JWKS under a known kid, and malformed strings, are refused."""
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        async with make_verifier(keys) as verifier:
            with pytest.raises(InvalidToken):
                await verifier.verify(keys.token("k1", key=stranger))
            for garbage in ("", "abc", "a.b.c", "x" * 10_000):
                with pytest.raises(InvalidToken, match="malformed"):
                    await verifier.verify(garbage)

    async def test_non_string_alg_is_refused(self, keys):
        """A header whose alg is a list or an object is an invalid token, not a server error."""
        import base64
        import json

        async with make_verifier(keys) as verifier:
            for alg in (["RS256"], {"x": 1}, None, 256):
                header = base64.urlsafe_b64encode(json.dumps({"alg": alg, "kid": "k1"}).encode()).rstrip(b"=")
                with pytest.raises(InvalidToken):
                    await verifier.verify(header.decode() + ".e30.c2ln")

    async def test_audience_none_accepts_any_application(self, keys):
        """Built without an audience (as the gateway is), tokens of every application verify."""
        async with make_verifier(keys, audience=None) as verifier:
            await verifier.verify(keys.token("k1", aud=["b" * 20]))


class TestEs256:
    async def test_es256_token(self, keys):
        """An ES256 token of an EC P-256 key of the JWKS verifies beside RS256 ones, with the default algorithms."""
        keys.add("e1", "ES256")
        async with make_verifier(keys) as verifier:
            claims = await verifier.verify(keys.token("e1", scope="profile"))
            await verifier.verify(keys.token("k1"))
        assert claims["scope"] == "profile"

    @pytest.mark.parametrize("advertise", [True, False], ids=["jwk-alg", "no-jwk-alg"])
    async def test_header_alg_must_fit_the_key(self, keys, advertise):
        """Algorithm confusion: a token naming an RSA key (RS256 kid) whose header says ES256, and one naming an EC
        key whose header says RS256, are refused before any signature check, whether or not the JWKS gives
        each key's ``alg``."""
        keys.add("k2", "RS256", advertise=advertise)
        keys.add("e1", "ES256", advertise=advertise)
        attacker_ec = ec.generate_private_key(ec.SECP256R1())
        attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = [keys.token("k2", key=attacker_ec, alg="ES256"), keys.token("e1", key=attacker_rsa, alg="RS256")]
        async with make_verifier(keys) as verifier:
            for token in forged:
                with pytest.raises(InvalidToken, match="does not match its key"):
                    await verifier.verify(token)

    async def test_es256_refused_when_not_allowed(self, keys):
        """A verifier built for RS256 only refuses ES256 tokens, and never asks the JWKS for their key."""
        keys.add("e1", "ES256")
        async with make_verifier(keys, algorithms=["RS256"]) as verifier:
            with pytest.raises(InvalidToken, match="algorithm"):
                await verifier.verify(keys.token("e1"))

    async def test_other_curves_are_skipped(self, keys):
        """An EC key on another curve than P-256, or whose ``alg`` does not fit its type, is not trusted."""
        keys.keys["p384"], keys.algs["p384"] = ec.generate_private_key(ec.SECP384R1()), "ES384"
        keys.keys["mislabelled"], keys.algs["mislabelled"] = ec.generate_private_key(ec.SECP256R1()), "RS256"
        async with make_verifier(keys, algorithms=["RS256", "ES256"]) as verifier:
            await verifier.verify(keys.token("k1"))
            assert set(verifier._keys) == {"k1"}


class TestJwksCache:
    async def test_unknown_kid_refreshes_once_per_cooldown(self, keys):
        """A new kid is fetched on first sight; an unknown kid does not hammer the JWKS within the cooldown."""
        clock = Clock()
        async with make_verifier(keys, refresh_cooldown=1.0, clock=clock) as verifier:
            await verifier.verify(keys.token("k1"))
            fetches = keys.fetches
            keys.add("k2")
            clock.now += 1.1
            await verifier.verify(keys.token("k2"))
            assert keys.fetches == fetches + 1
            for _ in range(5):
                with pytest.raises(InvalidToken, match="unknown"):
                    await verifier.verify(keys.token("k3", key=keys.keys["k1"]))
            assert keys.fetches == fetches + 1

    async def test_weak_keys_are_not_trusted(self, keys):
        """A 1024-bit key in the JWKS is skipped, so its tokens are refused as signed by an unknown key."""
        keys.keys["weak"] = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        with pytest.warns(InsecureKeyLengthWarning):
            weak = keys.token("weak")
        async with make_verifier(keys) as verifier:
            await verifier.verify(keys.token("k1"))
            with pytest.raises(InvalidToken, match="unknown"):
                await verifier.verify(weak)

    async def test_jwks_unreachable_is_unavailable(self, keys):
        """With no JWKS ever fetched the verifier answers Unavailable (503), not "invalid token"."""
        keys.failing = True
        async with make_verifier(keys) as verifier:
            with pytest.raises(Unavailable):
                await verifier.verify(keys.token("k1"))

    async def test_keys_survive_a_failing_refresh(self, keys):
        """Once fetched, keys stay usable while the JWKS endpoint fails."""
        async with make_verifier(keys, refresh_cooldown=0) as verifier:
            await verifier.verify(keys.token("k1"))
            keys.failing = True
            await verifier.refresh_jwks(force=True)
            await verifier.verify(keys.token("k1"))


class TestRevocation:
    async def test_revocation_seen_within_a_second(self, keys, redis_client, key_prefix):
        """A revocation broadcast by the user store is refused by a subscribed verifier within a second."""
        token = keys.token("k1")
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        async with make_verifier(keys, redis=redis_client, redis_keys=RedisKeys(key_prefix)) as verifier:
            await eventually(_live(verifier), 5, "the revocation subscription")
            await verifier.verify(token)
            await Revocations(redis_client, RedisKeys(key_prefix)).announce(
                [RevokedToken(jti=jti, exp=int(time.time()) + 60)]
            )
            took = await eventually(refuses(verifier, token), 1.0, "refusing the revoked token", interval=0.01)
        assert took < 1.0

    async def test_missed_message_is_recovered_on_resubscribe(self, keys, redis_url, redis_client, key_prefix):
        """A revocation that reached the denylist but not this verifier (its connection was down) is picked up
        when the subscription comes back, because every (re)subscription reloads the denylist."""
        token = keys.token("k1")
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        name = f"verifier-{uuid.uuid4().hex[:8]}"
        own = aioredis.Redis.from_url(redis_url, client_name=name)
        try:
            async with make_verifier(keys, redis=own, redis_keys=RedisKeys(key_prefix)) as verifier:
                await eventually(_live(verifier), 5, "the revocation subscription")
                # The message is lost: only the denylist has it.
                await redis_client.zadd(RedisKeys(key_prefix).revoked_tokens, {jti: int(time.time()) + 60})
                await verifier.verify(token)
                listing = await redis_client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
                ids = [
                    line.split(b" ")[0].split(b"=")[1]
                    for line in listing.split(b"\n")
                    if f" name={name} ".encode() in line
                ]
                assert len(ids) == 1, listing
                await redis_client.execute_command("CLIENT", "KILL", "ID", ids[0])
                await eventually(refuses(verifier, token), 10, "the reload after resubscribing")
        finally:
            await own.aclose()

    async def test_keys_changed_message_rereads_the_jwks(self, keys, redis_client, key_prefix):
        """A SigningKeysChanged event makes the verifier drop a retired key at once, not at the cache's expiry."""
        token = keys.token("k1")
        async with make_verifier(
            keys, redis=redis_client, redis_keys=RedisKeys(key_prefix), refresh_cooldown=60
        ) as verifier:
            await eventually(_live(verifier), 5, "the revocation subscription")
            await verifier.verify(token)
            keys.add("k2")
            del keys.keys["k1"]
            await Revocations(redis_client, RedisKeys(key_prefix)).keys_changed(["k2"])
            await eventually(refuses(verifier, token), 5, "dropping the retired key")


class TestFeedLag:
    async def test_synced_while_pongs_come_back(self, keys, redis_client, key_prefix):
        """Subscribed, the feed counts as in sync within a PING interval; ``sync`` returns once a revocation
        published before it has been applied."""
        token = keys.token("k1")
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        async with make_verifier(keys, redis=redis_client, redis_keys=RedisKeys(key_prefix)) as verifier:
            assert not verifier.revocations_synced(1.0)
            await eventually(_synced(verifier), 5, "the feed in sync", interval=0.01)
            await Revocations(redis_client, RedisKeys(key_prefix)).announce(
                [RevokedToken(jti=jti, exp=int(time.time()) + 60)]
            )
            assert await verifier.sync()
            assert verifier.is_revoked(jti)

    async def test_a_store_is_heard_only_while_it_beats(self, keys, redis_client, key_prefix):
        """In sync is not enough to answer alone: a user store must be heard on the feed. None is until a store with
        Redis runs its heartbeat, and its silence is noticed within a second once it stops (a store started without
        REDIS_URL, whose revocations no verifier would see, is never heard)."""
        async with make_verifier(keys, redis=redis_client, redis_keys=RedisKeys(key_prefix)) as verifier:
            await eventually(_synced(verifier), 5, "the feed in sync", interval=0.01)
            assert not verifier.publisher_heard(1.0)
            beating = asyncio.create_task(Revocations(redis_client, RedisKeys(key_prefix)).heartbeat_forever())
            try:
                await eventually(lambda: _true(verifier.publisher_heard(1.0)), 5, "a store heard", interval=0.01)
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
            stopped = time.monotonic()
            await eventually(lambda: _true(not verifier.publisher_heard(1.0)), 5, "the silence noticed", interval=0.01)
            assert time.monotonic() - stopped < 1.5

    async def test_a_silent_connection_is_out_of_sync_within_a_second(self, keys, redis_url, key_prefix):
        """A subscription whose connection stops carrying bytes without an error (a partition, not a reset) still
        looks live, but is no longer in sync within ``max_lag``, and ``sync`` gives up; once bytes flow again it
        is in sync again."""
        async with _Proxy(redis_url) as proxy:
            redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}")
            try:
                async with make_verifier(keys, redis=redis, redis_keys=RedisKeys(key_prefix)) as verifier:
                    await eventually(_synced(verifier), 5, "the feed in sync", interval=0.01)
                    proxy.frozen = True
                    frozen_at = time.monotonic()
                    await eventually(_not_synced(verifier), 2, "the feed out of sync", interval=0.01)
                    assert time.monotonic() - frozen_at <= 1.05
                    assert verifier.revocation_live
                    assert not await verifier.sync(timeout=0.3)
                    proxy.frozen = False
                    await eventually(_synced(verifier), 5, "the feed in sync again", interval=0.01)
            finally:
                await redis.aclose()


class _Proxy:
    """A TCP relay to Redis that can stop relaying (``frozen``) without closing anything."""

    def __init__(self, redis_url: str) -> None:
        self._target = urllib.parse.urlsplit(redis_url)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    @frozen.setter
    def frozen(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def __aenter__(self) -> _Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._target.scheme == "unix":
            up_reader, up_writer = await asyncio.open_unix_connection(self._target.path)
        else:
            up_reader, up_writer = await asyncio.open_connection(self._target.hostname, self._target.port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._relay(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()


def _synced(verifier: Verifier):
    async def check() -> bool:
        return verifier.revocations_synced(1.0)

    return check


def _not_synced(verifier: Verifier):
    async def check() -> bool:
        return not verifier.revocations_synced(1.0)

    return check


class TestEndToEnd:
    async def test_logout_seen_by_a_verifier_within_a_second(self, stack: Stack, redis_url):
        """A user's service verifying locally (JWKS from the gateway, revocations from the stack's Redis) refuses
        a token within a second of its RFC 7009 revocation at the gateway."""
        redis = aioredis.Redis.from_url(redis_url)
        async with aiohttp.ClientSession() as session:
            try:
                token = (await stack_login(session, stack, "o-verifier"))["access_token"]
                verifier = stack_verifier(session, stack, redis)
                async with verifier:
                    await eventually(_live(verifier), 5, "the revocation subscription")
                    assert (await verifier.verify(token))["aud"] == [stack.demo["clientId"]]
                    await revoke(session, stack, token)
                    took = await eventually(refuses(verifier, token), 1.0, "refusing after logout", 0.01)
                assert took < 1.0
            finally:
                await redis.aclose()


def _at_now(claims: dict[str, Any]) -> dict[str, Any]:
    """Time claims given as offsets from now (parameters are built at collection, long before the test runs)."""
    now = int(time.time())
    timed = {k: now + v for k, v in claims.items() if k in ("exp", "nbf", "iat") and not isinstance(v, bool | str)}
    return {**claims, **timed}


def _live(verifier: Verifier):
    async def check() -> bool:
        return verifier.revocation_live

    return check


async def _never() -> dict[str, Any]:
    await asyncio.sleep(0)
    raise AssertionError("not fetched")


class TestJwtCheck:
    """``shared.jwtcheck``, the parser and checker under the verifier and the user store."""

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _check(self, token: str, key: Any = None, **kwargs: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"algorithms": {"RS256", "PS256"}, "issuer": ISSUER, "audience": AUDIENCE}
        return jwtcheck.check(jwtcheck.parse(token), key or self.key.public_key(), **{**options, **kwargs})

    def _token(
        self, headers: dict[str, Any] | None = None, alg: str = "RS256", key: PrivateKey | None = None, **claims: Any
    ) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "s", "jti": "j", "iat": now, "nbf": now, "exp": now + 60}
        return jwt.encode({**body, **claims}, key or self.key, algorithm=alg, headers=headers)

    def test_rsa_pss_and_string_audience(self):
        """PS256 verifies when allowed, and a single-string aud is accepted like a list."""
        assert self._check(self._token(alg="PS256"))["aud"] == AUDIENCE

    def test_es256(self):
        """An ES256 token verifies with its P-256 key; its JWS signature is r || s (64 bytes), so a DER-encoded
        one or one of another length is refused, and neither key type checks the other algorithm's tokens."""
        ec_key = ec.generate_private_key(ec.SECP256R1())
        token = self._token(alg="ES256", key=ec_key)
        assert self._check(token, key=ec_key.public_key(), algorithms={"ES256"})["sub"] == "s"
        parsed = jwtcheck.parse(token)
        r, s = int.from_bytes(parsed.signature[:32], "big"), int.from_bytes(parsed.signature[32:], "big")
        head = token.rsplit(".", 1)[0]
        for signature in (encode_dss_signature(r, s), parsed.signature[:-1], parsed.signature + b"\0"):
            bad = head + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
            with pytest.raises(InvalidToken, match="signature"):
                self._check(bad, key=ec_key.public_key(), algorithms={"ES256"})
        with pytest.raises(InvalidToken, match="does not match its key"):
            self._check(token, algorithms={"ES256"})  # the RSA key
        with pytest.raises(InvalidToken, match="does not match its key"):
            self._check(self._token(), key=ec_key.public_key(), algorithms={"RS256"})
        p384 = ec.generate_private_key(ec.SECP384R1())
        with pytest.raises(InvalidToken, match="does not match its key"):
            self._check(token, key=p384.public_key(), algorithms={"ES256"})

    @pytest.mark.parametrize(
        ("claims", "message"),
        [
            ({"exp": True}, "not a number"),
            ({"exp": "soon"}, "not a number"),
            ({"iat": +600}, "not valid yet"),
            ({"sub": 42}, "not a string"),
            ({"aud": [1]}, "audience"),
        ],
    )
    def test_malformed_claims(self, claims, message):
        """Claims of the wrong type, or an iat in the future, are refused."""
        with pytest.raises(InvalidToken, match=message):
            self._check(self._token(**_at_now(claims)))

    def test_missing_claims_and_crit(self):
        """A required claim missing, and a critical header extension we cannot honour, are refused."""
        with pytest.raises(InvalidToken, match="lacks the claim 'exp'"):
            self._check(jwt.encode({"iss": ISSUER, "aud": AUDIENCE}, self.key, algorithm="RS256"))
        with pytest.raises(InvalidToken, match="extensions"):
            self._check(self._token(headers={"crit": ["exp"], "exp": 1}))

    def test_non_ascii_and_bad_padding(self):
        """Characters outside base64url and impossible segment lengths are malformed, not exceptions."""
        token = self._token()
        for bad in (token.replace(".", ".é", 1), token + "AAA", "a.b.c", "..", token + ".x"):
            with pytest.raises(InvalidToken, match="malformed"):
                jwtcheck.parse(bad)


async def _true(value: bool) -> bool:
    return value
