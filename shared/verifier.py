"""Verifying minidoor access tokens inside a Python service, with no call per request (the gateway uses it too).

    verifier = Verifier(
        issuer="https://login.example.com",        # the user store's ISSUER
        audience="<your client_id>",               # None accepts every application's tokens
        jwks=http_jwks(session, "https://login.example.com/.well-known/jwks"),
        redis=redis.asyncio.Redis.from_url(...),   # optional: sees a logout within a second
        redis_keys=RedisKeys("minidoor"),                     # the stack's KEY_PREFIX
    )
    async with verifier:
        claims = await verifier.verify(token)      # or raises shared.errors.InvalidToken (401 invalid_token)

Checks, in order: the header's ``alg`` is in a fixed allow-list of public-key algorithms (RSA, and ES256 on P-256;
never ``none``, never HS*, so a public key is never taken for an HMAC secret); its ``kid`` names a key of the cached
JWKS (an unknown kid re-reads the JWKS, at most once per ``refresh_cooldown``) whose own ``alg``, if given, is the
header's, and whose type fits it (an RS256 header on an EC key, or ES256 on an RSA key, is refused); the signature;
``iss``; ``aud`` (when an audience is set); ``exp``/``nbf``/``iat`` with ``leeway`` seconds; ``tokenType``
(``access-token`` unless asked otherwise); and the ``jti`` is not revoked. The JWKS cache's ages (``jwks_max_age``,
``refresh_cooldown``) and the denylist's pruning period run on ``clock`` (``time.monotonic`` unless a test passes its
own); the token's time claims are checked against the wall clock.

Revocation: a task subscribes to ``RedisKeys.token_events``. On every (re)subscription it reloads the whole denylist
(``RedisKeys.revoked_tokens``), so a revocation published while it was disconnected is not lost; ``SigningKeysChanged``
re-reads the JWKS at once. Without Redis only expiry ends a token; ``revocation_live`` tells whether the
subscription is up.

How far behind the feed may be: every ``PING_INTERVAL`` the task PINGs on the subscription's own connection. Redis
answers in order, after every message it published before, so a PONG proves that whatever was published before its
PING was sent has been applied. ``revocations_synced(max_lag)`` is true while the last PONG's PING left less than
``max_lag`` seconds ago: a connection that died silently (no reset, no error) shows within ``max_lag``, and a caller
that must never answer from a stale denylist (the gateway's introspection) can ask the authority instead.
``await sync()`` waits for the PONG of a PING sent after the call: once a call that revoked has returned, this
process's next check sees it. These lags are measured on ``time.monotonic``, never on ``clock``: a test's clock
must not make a stale feed look fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import aiohttp
import jwt
import msgspec
import redis.asyncio as aioredis
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared import jwtcheck
from shared.errors import InvalidToken, Unavailable
from shared.messages import SigningKeysChanged, TokensRevoked, token_event_decoder
from shared.redis_keys import RedisKeys

log = structlog.get_logger()

#: The only algorithms a Verifier can be asked to accept: RSA and ECDSA signatures, which need the public key to verify.
ALLOWED_ALGORITHMS = jwtcheck.ALGORITHMS
#: Shorter RSA keys are factorable; a JWKS offering one is not trusted with it.
MIN_RSA_BITS = 2048
_PRUNE_EVERY = 60.0
#: Seconds between the PINGs that measure how far behind the revocation feed is (and the longest ``sync`` waits).
PING_INTERVAL = 0.1

#: Returns a JWK set document (``{"keys": [...]}``); raising means "not now", the old keys stay.
JwksSource = Callable[[], Awaitable[Mapping[str, Any]]]


def http_jwks(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> JwksSource:
    """A ``JwksSource`` that GETs ``url`` (e.g. the gateway's ``/.well-known/jwks``) with ``session``."""

    async def fetch() -> Mapping[str, Any]:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            resp.raise_for_status()
            doc = await resp.json(content_type=None)
        if not isinstance(doc, Mapping):
            raise ValueError("the JWKS is not a JSON object")
        return doc

    return fetch


@dataclass(frozen=True, slots=True)
class _Key:
    public_key: jwtcheck.PublicKey
    alg: str | None


def parse_jwks(doc: Mapping[str, Any], algorithms: Collection[str]) -> dict[str, _Key]:
    """The RSA and EC P-256 signature keys of a JWK set, by kid; entries of another type, curve, use or algorithm
    (or whose ``alg`` does not fit their type) are skipped."""
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: dict[str, _Key] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        kid, alg, kty = entry.get("kid"), entry.get("alg"), entry.get("kty")
        if not isinstance(kid, str) or kty not in ("RSA", "EC") or entry.get("use", "sig") != "sig":
            continue
        if alg is not None and alg not in algorithms:
            continue
        public = _public_key(kid, kty, entry)
        if public is None:
            continue
        if isinstance(alg, str) and not jwtcheck.fits(alg, public):
            log.warning("jwks_entry_skipped", kid=kid, reason=f"alg {alg} does not fit a {kty} key")
            continue
        keys[kid] = _Key(public, alg if isinstance(alg, str) else None)
    return keys


def _public_key(kid: str, kty: str, entry: Mapping[str, Any]) -> jwtcheck.PublicKey | None:
    try:
        key = RSAAlgorithm.from_jwk(dict(entry)) if kty == "RSA" else ECAlgorithm.from_jwk(dict(entry))
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        log.warning("jwks_entry_skipped", kid=kid)
        return None
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        log.warning("jwks_entry_skipped", kid=kid, reason=f"{public.key_size}-bit key")
        return None
    if isinstance(public, ec.EllipticCurvePublicKey) and not isinstance(public.curve, ec.SECP256R1):
        log.warning("jwks_entry_skipped", kid=kid, reason=f"curve {public.curve.name}")
        return None
    return public


class Verifier:
    def __init__(
        self,
        *,
        issuer: str,
        jwks: JwksSource,
        audience: str | Collection[str] | None,
        algorithms: Collection[str] = jwtcheck.SIGNING_ALGORITHMS,
        leeway: float = 10.0,
        token_type: str = "access-token",
        redis: aioredis.Redis | None = None,
        redis_keys: RedisKeys | None = None,
        jwks_max_age: float = 300.0,
        refresh_cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        refused = set(algorithms) - ALLOWED_ALGORITHMS
        if refused or not algorithms:
            raise ValueError(f"algorithms must be a non-empty subset of {sorted(ALLOWED_ALGORITHMS)}, not {refused}")
        if redis is not None and redis_keys is None:
            raise ValueError("revocation needs the RedisKeys (KEY_PREFIX) the user store publishes under")
        self.issuer = issuer
        self._fetch = jwks
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._token_type = token_type
        self._redis = redis
        self._redis_keys = redis_keys
        #: Channel names arrive as bytes from redis-py.
        self._heartbeat_channel = redis_keys.revocation_heartbeat.encode() if redis_keys is not None else b""
        #: When a user store's heartbeat last came (monotonic); -inf before the first.
        self._publisher_heard_at = -math.inf
        self._max_age = jwks_max_age
        self._cooldown = refresh_cooldown
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._refresh_lock = asyncio.Lock()
        self._revoked: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.revocation_live = False
        #: When the PING of the last PONG received was sent (monotonic); -inf while unsubscribed.
        self._synced_at = -math.inf
        self._ping_ids = itertools.count(1)
        #: PINGs in flight, in the order sent: (id, sent at).
        self._pings: deque[tuple[int, float]] = deque()
        #: Waiters of ``sync``: when they asked, and the future a PONG of a later PING resolves.
        self._sync_waiters: list[tuple[float, asyncio.Future[None]]] = []

    async def start(self) -> None:
        """Fetch the JWKS and subscribe to revocations in the background: a source that is down delays nothing."""
        self._spawn(self._first_jwks())
        if self._redis is not None:
            self._spawn(self._listen())

    async def _first_jwks(self) -> None:
        """Until a JWKS has been read: a source still starting (the user store beside a new gateway) is asked
        again within a second, not once per ``refresh_cooldown`` on a token's unknown kid."""
        backoff = 0.2
        while not self._closing:
            async with self._refresh_lock:
                if not self._keys:
                    await self._read_jwks(self._clock())
                if self._keys:
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        # redis-py's pub/sub read can swallow a cancellation that lands as its read timeout fires (Python 3.11's
        # asyncio.timeout); the flag ends the listener at its next read all the same.
        self._closing = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.revocation_live = False

    async def __aenter__(self) -> Verifier:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def has_key(self, kid: object) -> bool:
        """Whether the cached JWKS holds a key for this ``kid`` header (nothing is fetched)."""
        return isinstance(kid, str) and kid in self._keys

    def accepts(self, alg: object) -> bool:
        return isinstance(alg, str) and alg in self._algorithms

    def publisher_heard(self, max_age: float) -> bool:
        """True while a user store's heartbeat came less than ``max_age`` seconds ago: some store broadcasts its
        revocations to this feed (one started without Redis never says so)."""
        return self.revocation_live and time.monotonic() - self._publisher_heard_at < max_age

    def revocations_synced(self, max_lag: float) -> bool:
        """True while the subscription is up and every revocation published more than ``max_lag`` seconds ago has
        been applied (the module docstring says how that is known)."""
        return self.revocation_live and time.monotonic() - self._synced_at < max_lag

    async def sync(self, timeout: float = 1.0) -> bool:
        """Wait until whatever was published before this call has been applied (the next PONG, at most
        ``PING_INTERVAL`` plus a round trip away); False when the subscription is down or none came in ``timeout``."""
        if not self.revocation_live:
            return False
        asked_at = time.monotonic()
        waiter = (asked_at, asyncio.get_running_loop().create_future())
        self._sync_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter[1]
        except TimeoutError:
            return False
        finally:
            self._sync_waiters.remove(waiter)
        return True

    async def verify(self, token: str, *, token_type: str | None = None) -> dict[str, Any]:
        """The claims of ``token``; ``InvalidToken`` when it is not a live token for us, ``Unavailable`` when no
        JWKS could ever be fetched."""
        claims = await self.signed_claims(jwtcheck.parse(token))
        expected_type = token_type or self._token_type
        if claims.get("tokenType") != expected_type:
            raise InvalidToken("the token is not an {expected_type}", expected_type=expected_type)
        if claims["jti"] in self._revoked:
            raise InvalidToken("the token has been revoked")
        return claims

    async def signed_claims(self, parsed: jwtcheck.ParsedJwt) -> dict[str, Any]:
        """What ``verify`` checks but ``tokenType`` and revocation: the algorithm, the key, the signature, ``iss``,
        ``aud`` (when the verifier has an audience), and the time claims with ``leeway``."""
        alg, kid = parsed.alg, parsed.kid
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("the token's algorithm {alg!r} is not accepted", alg=str(alg))
        if not isinstance(kid, str):
            raise InvalidToken("the token names no signing key (kid)")
        key = self._keys.get(kid)
        if key is None:
            await self.refresh_jwks()
            key = self._keys.get(kid)
            if key is None:
                if not self._keys:
                    raise Unavailable("the token signing keys (JWKS) cannot be fetched", retry_after=1)
                raise InvalidToken("the token's signing key is unknown or retired")
        elif self._clock() - self._fetched_at > self._max_age and not self._refresh_lock.locked():
            self._spawn(self.refresh_jwks())
        if key.alg is not None and key.alg != alg:
            raise InvalidToken("the token's algorithm does not match its key")
        return jwtcheck.check(
            parsed,
            key.public_key,
            algorithms=self._algorithms,
            issuer=self.issuer,
            audience=self._audience,
            leeway=self._leeway,
        )

    async def refresh_jwks(self, *, force: bool = False) -> None:
        """Re-read the JWKS unless it was tried less than ``refresh_cooldown`` ago (``force`` skips that)."""
        async with self._refresh_lock:
            now = self._clock()
            if not force and now - self._attempted_at < self._cooldown:
                return
            await self._read_jwks(now)

    async def _read_jwks(self, now: float) -> None:
        """One read of the JWKS, holding ``_refresh_lock``."""
        self._attempted_at = now
        try:
            keys = parse_jwks(await self._fetch(), self._algorithms)
        except Exception as exc:  # any failure of a pluggable source means "keep the keys we have"
            log.warning("jwks_fetch_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if keys.keys() != self._keys.keys():
            log.info("jwks_loaded", kids=sorted(keys))
        self._keys = keys
        self._fetched_at = now

    async def _listen(self) -> None:
        assert self._redis is not None and self._redis_keys is not None
        backoff = 0.1
        while not self._closing:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._redis_keys.token_events, self._redis_keys.revocation_heartbeat)
                pruned, pinged = self._clock(), time.monotonic()
                while not self._closing:
                    message = await pubsub.get_message(timeout=PING_INTERVAL)
                    if message is not None and message["type"] == "subscribe":
                        # Also after redis-py reconnects by itself: whatever was published meanwhile is in the set.
                        self._unsynced()
                        await self._reload_denylist()
                        self.revocation_live, backoff = True, 0.1
                        pinged = -math.inf  # in sync as soon as the first PONG is back
                    elif message is not None and message["type"] == "message":
                        if message["channel"] == self._heartbeat_channel:
                            self._publisher_heard_at = time.monotonic()
                        else:
                            self._on_event(message["data"])
                    elif message is not None and message["type"] == "pong":
                        self._on_pong(message["data"])
                    now = time.monotonic()
                    if self.revocation_live and now - pinged >= PING_INTERVAL:
                        # Only this task writes to the connection: never in the middle of redis-py reconnecting it.
                        await pubsub.ping(str(self._ping()))
                        pinged = now
                    if self._clock() - pruned > _PRUNE_EVERY:
                        self._prune()
                        pruned = self._clock()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("revocations_unsubscribed", error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
            finally:
                self.revocation_live = False
                self._unsynced()
                with contextlib.suppress(aioredis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _ping(self) -> int:
        """The id of a PING about to be sent, recorded with the time it leaves."""
        ping_id = next(self._ping_ids)
        self._pings.append((ping_id, time.monotonic()))
        if len(self._pings) > 1000:  # PONGs that never came (a connection replaced under us): forget the oldest
            self._pings.popleft()
        return ping_id

    def _on_pong(self, data: bytes | str) -> None:
        try:
            ping_id = int(data)
        except ValueError:
            return  # redis-py's own health check, or a PING that is not ours
        while self._pings and self._pings[0][0] <= ping_id:
            answered, sent_at = self._pings.popleft()
            if answered == ping_id:
                self._synced_at = max(self._synced_at, sent_at)
        for asked_at, future in self._sync_waiters:
            if asked_at <= self._synced_at and not future.done():
                future.set_result(None)

    def _unsynced(self) -> None:
        """A new or lost subscription: nothing applied so far counts until a PONG on the new one."""
        self._synced_at = -math.inf
        self._pings.clear()

    async def _reload_denylist(self) -> None:
        assert self._redis is not None and self._redis_keys is not None
        since = int(time.time() - self._leeway) - 1
        entries = cast(
            list[tuple[bytes | str, float]],
            await self._redis.zrangebyscore(self._redis_keys.revoked_tokens, since, "+inf", withscores=True),
        )
        self._revoked = {_text(member): int(score) for member, score in entries}

    def _on_event(self, data: bytes) -> None:
        try:
            event = token_event_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("token_event_undecodable", error=str(exc))
            return
        match event:
            case TokensRevoked(tokens=tokens):
                for entry in tokens:
                    self._revoked[entry.jti] = entry.exp
            case SigningKeysChanged():
                self._spawn(self.refresh_jwks(force=True))

    def _prune(self) -> None:
        horizon = time.time() - self._leeway
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp >= horizon}

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
