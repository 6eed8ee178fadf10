"""Rate limits shared by every process through Redis: GCRA in one Lua script (EVALSHA; ``shared/redis_scripts.py``),
so a limit holds across gateway replicas and workers, and one round trip decides.

A ``Limit`` allows ``count`` requests per ``period`` seconds per key, as a burst of up to ``count`` that refills
evenly. ``check`` spends one unit and raises ``RateLimited`` (429, ``Retry-After``) when none is left; ``peek``
only asks whether a key is over its limit, spending nothing (for limits that count failures: the request is
checked first, and only a failure is counted). ``check_all`` does a request's checks in one script call, which
concurrent requests share (``shared/redis_batch.py``).

A peek that finds a key under its limit is remembered by this process for ``PEEK_MEMO_SECONDS``, until it spends
from that key itself: a request that then only peeks (an introspection with good credentials, say) costs no round
trip, and what the memo can miss is other replicas' spending, for that long at most.

Redis trouble: a limit with ``fail_open`` lets the request through (logins must not depend on the limiter
more than on the job stream); one without raises ``Unavailable``. Keys are HMAC'd under a key only the gateways
and workers hold (``limiter_hash_key``): no IP, code or client id appears in Redis or in logs, and a guessed one
cannot be confirmed from them (an unkeyed hash of an IPv4 address is undone by trying all 2^32).

A trip is audited: the first refusal of a key under a limit in each period publishes one ``rate_limited``
``AuditEvent`` (``shared/audit.py``), with the ``Origin`` the caller passed. The same script call that refuses
sets the period's marker, so an allowed request costs nothing more and a flood of refusals leaves one row.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn, cast

import msgspec
import redis.asyncio as aioredis
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import redis_scripts
from shared.audit import AuditPublisher
from shared.errors import RateLimited, Unavailable
from shared.guard import log_id
from shared.messages import AuditEvent
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys

log = structlog.get_logger()

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: How long an allowed peek of a key stands in this process (unless it spends from the key meanwhile).
PEEK_MEMO_SECONDS = 1.0
_PEEK_MEMO_ENTRIES = 10_000


class Limit(msgspec.Struct, frozen=True):
    """``count`` per ``period`` seconds per key; ``count`` 0 turns the limit off."""

    name: str
    count: int
    period: float
    fail_open: bool = True


class Check(NamedTuple):
    """One limit checked for one key: ``cost`` 1 spends a request of its budget, 0 only asks (a peek)."""

    limit: Limit
    key: str
    cost: int = 1


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """Where a limited request came from, for the audit row of a trip. Never a secret: ``client_id`` is a known
    application's id, or the log-safe hash of whatever was sent (``Origin.of``)."""

    client_ip: str = ""
    request_id: str = ""
    client_id: str = ""
    application: str = ""
    organization: str = ""

    @classmethod
    def of(
        cls, *, client_ip: str, request_id: str, client_id: str = "", application: str = "", organization: str = ""
    ) -> Origin:
        """``client_id`` kept as it is when ``application`` names the application it belongs to, else hashed: an
        unknown id may be anything, a secret pasted in the wrong field included."""
        safe_id = client_id if application or not client_id else log_id(client_id)
        return cls(
            client_ip=client_ip,
            request_id=request_id,
            client_id=safe_id,
            application=application,
            organization=organization,
        )


_HKDF_INFO = b"minidoor rate-limit keys v1"


def limiter_hash_key(stream_seal_key: str, internal_token: str) -> bytes:
    """The HMAC key of rate-limit keys, derived (HKDF, a purpose of its own) from ``STREAM_SEAL_KEY``, else from
    ``INTERNAL_TOKEN``: secrets every gateway and worker already share, so no setting of its own. The seal key is
    preferred because it never leaves these processes. Changing the secret starts every budget afresh (during a
    rolling change the replicas count apart for one period at most)."""
    secret = stream_seal_key or internal_token
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret.encode())


def keyed_hash(hash_key: bytes, value: str) -> str:
    """What Redis keys and log lines carry instead of an IP, a code or an id."""
    return hmac.digest(hash_key, value.encode("utf-8", "surrogateescape"), "sha256")[:8].hex()


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        redis_keys: RedisKeys,
        hash_key: bytes,
        *,
        audit: AuditPublisher | None = None,
        on_limited: Callable[[str], None] | None = None,
        batcher: RedisBatcher | None = None,
    ) -> None:
        self._redis_keys = redis_keys
        self._hash_key = hash_key
        self._script = (batcher or RedisBatcher(redis)).script(redis_scripts.GCRA)
        self._audit = audit
        self._on_limited = on_limited
        #: (limit name, key) -> until when an allowed peek stands (monotonic).
        self._peeked: dict[tuple[str, str], float] = {}

    async def check(self, limit: Limit, key: str, origin: Origin | None = None) -> None:
        """Spend one request of ``key``'s budget; ``RateLimited`` when it is spent."""
        await self.check_all([Check(limit, key)], origin)

    async def peek(self, limit: Limit, key: str, origin: Origin | None = None) -> None:
        """``RateLimited`` if ``key`` is over ``limit`` now, spending nothing."""
        await self.check_all([Check(limit, key, cost=0)], origin)

    async def check_all(self, checks: Sequence[Check], origin: Origin | None = None) -> None:
        """Every check of one request, in one script call (batched with other requests'): as ``check`` and ``peek``
        one after the other, in order, the first refusal raising; the checks after it spend nothing. A peek this
        process remembers as allowed is not sent; a check forgets its key's peek."""
        now = time.monotonic()
        for c in checks:
            if c.cost:
                self._peeked.pop((c.limit.name, c.key), None)
        live = [
            c
            for c in checks
            if c.limit.count > 0 and c.key and (c.cost or self._peeked.get((c.limit.name, c.key), 0.0) <= now)
        ]
        if not live:
            return
        hashed = [keyed_hash(self._hash_key, c.key) for c in live]
        items = [
            (
                (self._redis_keys.rate_limit(c.limit.name, h), self._redis_keys.rate_limit_audited(c.limit.name, h)),
                (c.limit.period * 1000 / c.limit.count, c.limit.period * 1000, c.cost, 1 if i else 0),
            )
            for i, (c, h) in enumerate(zip(live, hashed, strict=True))
        ]
        try:
            results = cast(list[Sequence[int]], await self._script.run(items))
        except (aioredis.RedisError, OSError) as exc:
            for c in live:
                if not (c.limit.fail_open or c.cost == 0):  # a peek never refuses on its own
                    raise Unavailable("rate limiting is unavailable; retry shortly", retry_after=1) from None
                log.warning("rate_limit_unavailable", limit=c.limit.name, error=type(exc).__name__, fail_open=True)
            return
        for c, h, (allowed, retry_ms, first) in zip(live, hashed, results, strict=True):
            if allowed == 0:
                self._refused(c.limit, h, int(retry_ms), bool(first), origin)
            if allowed == 1 and c.cost == 0:
                self._remember_peek(c, now)

    def _remember_peek(self, check: Check, now: float) -> None:
        if len(self._peeked) >= _PEEK_MEMO_ENTRIES:
            self._peeked = {k: until for k, until in self._peeked.items() if until > now}
            if len(self._peeked) >= _PEEK_MEMO_ENTRIES:
                self._peeked.clear()
        self._peeked[(check.limit.name, check.key)] = now + PEEK_MEMO_SECONDS

    def _refused(self, limit: Limit, hashed: str, retry_ms: int, first: bool, origin: Origin | None) -> NoReturn:
        retry_after = max(1, -(-retry_ms // 1000))
        log.info("rate_limited", limit=limit.name, key=hashed, retry_after=retry_after, audited=first)
        if first and self._audit is not None:
            self._audit.publish(_trip_event(limit, hashed, retry_after, origin or Origin()))
        if self._on_limited is not None:
            self._on_limited(limit.name)
        raise RateLimited(
            "too many requests ({name}); retry in {seconds} s",
            retry_after=retry_after,
            name=limit.name,
            seconds=retry_after,
        )


def _trip_event(limit: Limit, hashed: str, retry_after: int, origin: Origin) -> AuditEvent:
    """The row of a trip: the limit, its window and the keyed hash of what was limited (the log lines' ``key``),
    never the IP, code or id itself beyond the origin's own columns."""
    return AuditEvent(
        action="rate_limited",
        outcome="denied",
        at=time.time(),
        client_ip=origin.client_ip,
        request_id=origin.request_id,
        client_id=origin.client_id,
        application=origin.application,
        organization=origin.organization,
        details={
            "limit": limit.name,
            "count": limit.count,
            "window_s": limit.period,
            "retry_after": retry_after,
            "key": hashed,
        },
    )


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
