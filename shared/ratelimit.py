"""Rate limits shared by every process through Redis: GCRA in one Lua script (EVALSHA), so a limit holds across
gateway replicas and workers, and one round trip decides.

A ``Limit`` allows ``count`` requests per ``period`` seconds per key, as a burst of up to ``count`` that refills
evenly. ``check`` spends one unit and raises ``RateLimited`` (429, ``Retry-After``) when none is left; ``peek``
only asks whether a key is over its limit, spending nothing (for limits that count failures: the request is
checked first, and only a failure is counted).

Redis trouble: a limit with ``fail_open`` lets the request through (logins must not depend on the limiter
more than on the job stream); one without raises ``Unavailable``. Keys are hashed: no IP, code or client id
appears in Redis or in logs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import cast

import msgspec
import redis.asyncio as aioredis
import structlog

from shared.errors import RateLimited, Unavailable
from shared.keys import Keys

log = structlog.get_logger()

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# GCRA: the key holds the theoretical arrival time (TAT, ms). ARGV: emission interval (ms), tolerance (ms, the
# whole period: a full burst), cost (0 = peek). Returns {allowed, retry_after_ms}. Redis's clock, not the
# callers': replicas with skewed clocks still agree.
_GCRA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now_ms
if tat < now_ms then tat = now_ms end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if cost == 0 then allow_at = tat + interval - tolerance end
if allow_at > now_ms then
  return {0, allow_at - now_ms}
end
if cost > 0 then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now_ms)))
end
return {1, 0}
"""


class Limit(msgspec.Struct, frozen=True):
    """``count`` per ``period`` seconds per key; ``count`` 0 turns the limit off."""

    name: str
    count: int
    period: float
    fail_open: bool = True


def short_hash(value: str) -> str:
    """What logs and keys carry instead of an IP, a code or an id."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, on_limited: Callable[[str], None] | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(_GCRA)
        self._on_limited = on_limited

    async def check(self, limit: Limit, key: str) -> None:
        """Spend one request of ``key``'s budget; ``RateLimited`` when it is spent."""
        await self._run(limit, key, 1)

    async def peek(self, limit: Limit, key: str) -> None:
        """``RateLimited`` if ``key`` is over ``limit`` now, spending nothing."""
        await self._run(limit, key, 0)

    async def _run(self, limit: Limit, key: str, cost: int) -> None:
        if limit.count <= 0 or not key:
            return
        hashed = short_hash(key)
        interval_ms = limit.period * 1000 / limit.count
        try:
            allowed, retry_ms = cast(
                Sequence[int],
                await self._script(
                    keys=[self._keys.rate_limit(limit.name, hashed)],
                    args=[interval_ms, limit.period * 1000, cost],
                ),
            )
        except (aioredis.RedisError, OSError) as exc:
            if limit.fail_open or cost == 0:  # a peek never refuses on its own
                log.warning("rate_limit_unavailable", limit=limit.name, error=type(exc).__name__, fail_open=True)
                return
            raise Unavailable("rate limiting is unavailable; retry shortly", retry_after=1) from None
        if allowed:
            return
        retry_after = max(1, -(-int(retry_ms) // 1000))
        # The hook for the audit log: one line per refusal, with the limit and a hash of the key only.
        log.info("rate_limited", limit=limit.name, key=hashed, retry_after=retry_after)
        if self._on_limited is not None:
            self._on_limited(limit.name)
        raise RateLimited(f"too many requests ({limit.name}); retry in {retry_after} s", retry_after=retry_after)


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """``TRUSTED_PROXIES``: CIDRs (or single addresses) separated by commas or spaces."""
    return tuple(ipaddress.ip_network(part, strict=False) for part in value.replace(",", " ").split())


def client_ip(remote: str | None, forwarded_for: str, trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy; then the right-most hop of
    ``X-Forwarded-For`` that is not a trusted proxy (hops to its left could be forged by the client)."""
    hops = [remote or ""]
    if forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()] + hops
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop  # garbage from a trusted proxy's left: treat it as the client's own
        if not any(address in network for network in trusted):
            return hop
    return hops[0]
