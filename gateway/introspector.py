"""RFC 7662 introspection answered at the gateway, without a call to the user store for the common case.

The user store stays the authority on a token (``user_store/tokens.py``); the gateway answers alone only where it
knows the store's answer from what the store pushes, and asks the store in every other case:

- The client: ``(client_id, secret)`` pairs the store accepted less than ``CLIENT_SECRET_TTL`` seconds ago, kept
  as an HMAC-SHA256 of the secret under a key of this process (``ClientSecrets``). A secret that does not match
  the entry is not refused here: it goes to the store, which refuses it or (after a rotation) confirms the new one.
- The token: an access token (``tokenType``) whose signature and ``iss`` hold for a key of the verifier's JWKS,
  ``exp`` with no leeway (as the store), for the calling application (``azp``, the row's client), and whose ``jti``
  is not on the denylist. A user forbidden or deleted through update-user has every token revoked in the same
  transaction (``revoke_user_tokens``), so user status needs no event of its own.
- The feed: only while every revocation published more than ``MAX_FEED_LAG`` seconds ago is known to have been
  applied (``Verifier.revocations_synced``). A replica that lost the feed asks the store, which answers from
  PostgreSQL, or 503 when it cannot: never an ``active`` from a stale denylist. And only while a user store's
  heartbeat came within ``MAX_FEED_LAG`` (``Verifier.publisher_heard``): a store started without ``REDIS_URL``
  publishes no revocation and no heartbeat, so a cluster of such stores is always asked. (A cluster that mixes stores
  with and without Redis is not caught; every store must share the gateways' Redis and ``KEY_PREFIX``.)

The store still answers refresh tokens (or a hint naming them), anything that is not a JWT of a key the verifier
holds, a token not valid yet by this clock, and any client it has not confirmed. A verified token is memoized a few
seconds (``MEMO_SECONDS``, at most ``MEMO_ENTRIES``); expiry, key, client and denylist are checked on every answer.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.metrics import GatewayMetrics
from shared import jwtcheck
from shared.errors import InvalidToken, MinidoorError, Unauthorized
from shared.messages import Introspection, TokenRequest
from shared.user_store_client import UserStoreClient
from shared.verifier import Verifier

#: A replica whose revocation feed is further behind than this asks the store (issue 9: within 1 s everywhere).
MAX_FEED_LAG = 1.0
MEMO_SECONDS = 5.0
MEMO_ENTRIES = 4096
#: ``token_type_hint`` values naming a refresh token, as ``user_store.tokens`` reads them.
_REFRESH_HINTS = frozenset({"refresh_token", "refresh-token"})
_encoder = msgspec.json.Encoder()
INACTIVE = _encoder.encode(Introspection(active=False))


class ClientSecrets:
    """client_id -> HMAC-SHA256 of the secret the store last accepted for it, and when it was asked.

    Only a 200 from the store fills an entry, so a wrong secret is never cached as good. The key is random per
    process: the digests are worthless outside it. Bounded by the number of applications that introspect.
    """

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._key = secrets.token_bytes(32)
        self._entries: dict[str, tuple[bytes, float]] = {}

    def _digest(self, secret: str) -> bytes:
        return hmac.digest(self._key, secret.encode("utf-8", "surrogateescape"), "sha256")

    def confirmed(self, client_id: str, secret: str) -> bool:
        entry = self._entries.get(client_id)
        if entry is None or time.monotonic() - entry[1] >= self._ttl:
            return False
        return hmac.compare_digest(entry[0], self._digest(secret))

    def accept(self, client_id: str, secret: str, asked_at: float) -> None:
        """The store accepted ``secret`` in a call started at ``asked_at`` (monotonic): the TTL counts from then."""
        self._entries[client_id] = (self._digest(secret), asked_at)

    def refuse(self, client_id: str, secret: str) -> None:
        """The store refused ``secret``: drop the entry if it was this secret (rotated away)."""
        entry = self._entries.get(client_id)
        if entry is not None and hmac.compare_digest(entry[0], self._digest(secret)):
            del self._entries[client_id]


@dataclass(frozen=True, slots=True)
class _Verified:
    """What an answer needs of a token whose signature held: checked again on every answer, but the signature."""

    kid: str
    jti: str
    client_id: str
    exp: int
    nbf: int
    iat: int
    access: bool
    #: The encoded active answer (for ``client_id``).
    body: bytes
    until: float


class Introspector:
    def __init__(
        self, verifier: Verifier, store: UserStoreClient, clients: ClientSecrets, metrics: GatewayMetrics
    ) -> None:
        self._verifier = verifier
        self._store = store
        self._clients = clients
        self._memo: dict[str, _Verified] = {}
        self._answered_here = metrics.introspections.labels("gateway")
        self._answered_by_store = metrics.introspections.labels("user_store")

    async def introspect(self, req: TokenRequest, *, request_id: str = "") -> bytes:
        """The JSON answer to ``req``; the store's errors (401 invalid_client, 503) as they come."""
        # The feed is current, and a user store is on it: one started without Redis would revoke unheard.
        synced = self._verifier.revocations_synced(MAX_FEED_LAG) and self._verifier.publisher_heard(MAX_FEED_LAG)
        if synced and self._clients.confirmed(req.client_id, req.client_secret):
            answer = await self._local(req)
            if answer is not None:
                self._answered_here.inc()
                return answer
        self._answered_by_store.inc()
        asked_at = time.monotonic()
        try:
            result = await self._store.introspect(req, request_id=request_id)
        except Unauthorized:
            self._clients.refuse(req.client_id, req.client_secret)
            raise
        self._clients.accept(req.client_id, req.client_secret, asked_at)
        return _encoder.encode(result)

    async def _local(self, req: TokenRequest) -> bytes | None:
        """The store's answer when this process knows it, else None."""
        if req.token_type_hint in _REFRESH_HINTS:
            return None
        verified = await self._verified(req.token)
        if verified is None:
            return None
        if not isinstance(verified, _Verified):
            return INACTIVE
        now = time.time()
        if verified.exp <= now:
            return INACTIVE
        if verified.nbf > now or verified.iat > now:
            return None  # this clock is behind the store's: let it judge
        if not verified.access:
            return None
        if verified.client_id != req.client_id or self._verifier.is_revoked(verified.jti):
            return INACTIVE
        return verified.body

    async def _verified(self, token: str) -> _Verified | bytes | None:
        """The memoized or freshly checked token; INACTIVE when its signature or claims do not hold, None when this
        verifier cannot judge it (not a JWT, an algorithm or key it does not hold)."""
        now = time.monotonic()
        memo = self._memo.get(token)
        if memo is not None and memo.until > now and self._verifier.has_key(memo.kid):
            return memo
        try:
            parsed = jwtcheck.parse(token)
        except InvalidToken:
            return None
        if not self._verifier.accepts(parsed.alg):
            return None
        if not self._verifier.has_key(parsed.kid):
            await self._verifier.refresh_jwks()  # a new key, or none fetched yet: at most once per cooldown
            if not self._verifier.has_key(parsed.kid):
                return None
        try:
            claims = await self._verifier.signed_claims(parsed)
        except InvalidToken:
            return INACTIVE
        except MinidoorError:
            return None
        verified = _remember(claims, str(parsed.kid), now + MEMO_SECONDS)
        if verified is None:
            return None
        if len(self._memo) >= MEMO_ENTRIES:
            self._prune(now)
        self._memo[token] = verified
        return verified

    def _prune(self, now: float) -> None:
        """Drop what has aged out; if nothing has, the oldest quarter (dicts keep insertion order)."""
        self._memo = {token: v for token, v in self._memo.items() if v.until > now}
        if len(self._memo) >= MEMO_ENTRIES:
            for token in list(self._memo)[: MEMO_ENTRIES // 4]:
                del self._memo[token]


def _remember(claims: dict[str, Any], kid: str, until: float) -> _Verified | None:
    """The memo entry of verified ``claims``; None for claims the store would not answer as ours (then it judges)."""
    aud, azp = claims.get("aud"), claims.get("azp")
    audience = [aud] if isinstance(aud, str) else aud
    if not isinstance(audience, list) or not isinstance(azp, str) or audience != [azp]:
        return None
    scope, name = claims.get("scope"), claims.get("name")
    if not isinstance(scope, str) or not isinstance(name, str):
        return None
    exp, nbf, iat = (int(claims[key]) for key in ("exp", "nbf", "iat"))
    jti, sub, iss = (str(claims[key]) for key in ("jti", "sub", "iss"))
    body = _encoder.encode(
        Introspection(
            active=True,
            scope=scope,
            client_id=azp,
            username=name,
            token_type="Bearer",
            exp=exp,
            iat=iat,
            nbf=nbf,
            sub=sub,
            aud=[azp],
            iss=iss,
            jti=jti,
            token_use="access",
        )
    )
    access = claims.get("tokenType") == "access-token"
    return _Verified(kid=kid, jti=jti, client_id=azp, exp=exp, nbf=nbf, iat=iat, access=access, body=body, until=until)
