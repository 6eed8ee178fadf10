"""Telling every verifier that tokens died, or that the signing keys changed: the Redis half of a revocation.

A revocation ZADDs each token row's id (the ``jti`` of its access and its refresh token) to
``RedisKeys.revoked_tokens``, scored by the row's last expiry, prunes entries long expired, and PUBLISHes a
``TokensRevoked`` on ``RedisKeys.token_events``, all in one MULTI. A verifier that (re)subscribes reloads the set, so a
message it missed while disconnected is not lost. ``shared.verifier`` is the reading side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog

from shared.errors import Unavailable
from shared.messages import RevokedToken, SigningKeysChanged, TokensRevoked, encoder
from shared.redis_keys import RedisKeys

log = structlog.get_logger()

#: Entries stay this long past their expiry: longer than any verifier's leeway on ``exp``.
PRUNE_AFTER = 300
_BATCH = 1000
#: Seconds between a user store's heartbeats on ``RedisKeys.revocation_heartbeat``.
HEARTBEAT_EVERY = 0.25


class Revocations:
    """Broadcasts revocations; without Redis (a lone store, focused tests) it does nothing and rows alone decide."""

    def __init__(self, redis: aioredis.Redis | None, redis_keys: RedisKeys) -> None:
        self._redis = redis
        self._redis_keys = redis_keys

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    async def announce(self, revoked: Sequence[RevokedToken]) -> None:
        """Add still-live ``revoked`` to the denylist and publish them; ``Unavailable`` when Redis does not take it.

        Call it inside the transaction that marks the rows, before it commits: a failed broadcast then rolls the
        revocation back (the client retries), and a failed commit after it only denies a token early.
        """
        now = int(time.time())
        live = [entry for entry in revoked if entry.exp > now]
        if self._redis is None or not live:
            return
        for start in range(0, len(live), _BATCH):
            batch = live[start : start + _BATCH]
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(self._redis_keys.revoked_tokens, {entry.jti: entry.exp for entry in batch})
                    pipe.zremrangebyscore(self._redis_keys.revoked_tokens, "-inf", now - PRUNE_AFTER)
                    pipe.publish(self._redis_keys.token_events, encoder.encode(TokensRevoked(tokens=batch)))
                    await pipe.execute()
            except (aioredis.RedisError, OSError) as exc:
                raise Unavailable(
                    "the revocation could not be broadcast ({kind})", kind=type(exc).__name__, retry_after=1
                ) from exc
        log.info("tokens_revoked", count=len(live))

    async def keys_changed(self, kids: Sequence[str]) -> None:
        """Best effort: verifiers also re-read the JWKS on an unknown kid and when their copy is old."""
        if self._redis is None:
            return
        try:
            await self._redis.publish(
                self._redis_keys.token_events, encoder.encode(SigningKeysChanged(kids=list(kids)))
            )
        except (aioredis.RedisError, OSError) as exc:
            log.warning("keys_changed_not_published", error=f"{type(exc).__name__}: {exc}")

    async def heartbeat_forever(self) -> None:
        """Say on ``RedisKeys.revocation_heartbeat``, every ``HEARTBEAT_EVERY``, that this store broadcasts its
        revocations. A gateway answers introspection from its own denylist only while it hears a store: a store
        started without Redis (whose revocations no verifier sees) is never heard, so the gateways ask it instead."""
        assert self._redis is not None
        while True:
            try:
                await self._redis.publish(self._redis_keys.revocation_heartbeat, b"1")
            except (aioredis.RedisError, OSError):
                pass  # Redis away: verifiers lose their subscription too, and stop answering alone
            await asyncio.sleep(HEARTBEAT_EVERY)
