"""One WeChat ``access_token`` per AppID for the whole cluster, from ``cgi-bin/stable_token`` in normal mode.

Every API but jscode2session needs the token (reference §2). N workers fetching their own would each spend quota and,
worse, a forced refresh by one would invalidate the token of all the others (WxJava #369, #1222: 40001 storms). So:

- The token lives in Redis (``RedisKeys.wechat_token``, sealed with ``STREAM_SEAL_KEY`` when one is set), with its
  expiry. A process uses it as long as more than ``REFRESH_BEFORE`` (5 minutes) remain.
- Past that, one process at a time refreshes: it takes ``wechat_token_lock`` with a fresh fencing token
  (``TOKEN_LOCK``), reads the cache again (another may just have written it), asks stable_token in normal mode (which
  then hands out the next token and keeps the old one valid 5 more minutes), and writes the answer only while it
  still holds the lock with its fencing token (``TOKEN_STORE``). The others keep using the cached token while it is
  still valid, or wait for the refresher's answer (``waits``) when there is none: however many workers start at once,
  WeChat sees one call.
- An API that answers 40001/40014/42001 rejected the token: ``token_rejected`` reads the cache again (another process
  may already hold a newer token), else makes one normal-mode call under the lock; only if WeChat hands back the
  very token it just rejected is ``force_refresh`` used, at most once per ``FORCE_EVERY`` per AppID across the
  cluster (``wechat_token_forced``, SET NX): WeChat allows 20 a day, and each one invalidates every process's token.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import msgspec
import redis.asyncio as aioredis
import structlog

from auth_worker.metrics import WorkerMetrics
from auth_worker.wechat import WechatConfigError, WechatUnavailable
from shared.errors import UpstreamError
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys
from shared.redis_scripts import TOKEN_LOCK, TOKEN_STORE, TOKEN_UNLOCK
from shared.streamseal import StreamSeal

log = structlog.get_logger()

#: A cached token with less than this left is refreshed (WeChat rotates stable tokens 5 minutes before expiry).
REFRESH_BEFORE = 300.0
#: At most one force_refresh per AppID per this many seconds, cluster-wide (WeChat ignores closer ones).
FORCE_EVERY = 30.0
#: WeChat errcodes, from any API taking the token, that mean the token is not (or no longer) good.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
#: stable_token errcodes that mean the provider's AppID/secret (or the server's IP whitelisting) is wrong.
_CONFIG_ERRORS = frozenset({40002, 40013, 40125, 41002, 41004, 40164, 40243, 61004, 89503})
_PURPOSE = b"wechat access_token v1"

T = TypeVar("T")


class TokenRejected(Exception):
    """Raised by an API call (``AccessTokens.call``'s ``use``) when WeChat answered 40001/40014/42001."""

    def __init__(self, errcode: int) -> None:
        super().__init__(errcode)
        self.errcode = errcode


class _StableToken(msgspec.Struct, frozen=True):
    access_token: str = ""
    expires_in: int = 0
    errcode: int = 0
    errmsg: str = ""


_decoder = msgspec.json.Decoder(_StableToken)


@dataclass(frozen=True, slots=True)
class _Cached:
    token: str
    expires_at: float


class AccessTokens:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        batcher: RedisBatcher | None = None,
        seal: StreamSeal | None = None,
        metrics: WorkerMetrics | None = None,
        timeout: float = 3.0,
        lock_ttl: float = 10.0,
        wait_timeout: float = 8.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._session = session
        self._url = base_url.rstrip("/") + "/cgi-bin/stable_token"
        batcher = batcher or RedisBatcher(redis)
        self._lock = batcher.script(TOKEN_LOCK)
        self._store = batcher.script(TOKEN_STORE)
        self._unlock = batcher.script(TOKEN_UNLOCK)
        self._seal = seal
        self.metrics = metrics or WorkerMetrics()
        self._timeout = timeout
        self._lock_ttl_ms = int(lock_ttl * 1000)
        self._wait_timeout = wait_timeout
        self._clock = clock

    async def get(self, appid: str, secret: str) -> str:
        """The AppID's current token, refreshed by this process only when it is due and no other is at it."""
        return await self._obtain(appid, secret, rejected=None)

    async def token_rejected(self, appid: str, secret: str, rejected: str) -> str:
        """A token other than ``rejected``, which an API just refused: the cache's if newer, else WeChat's."""
        return await self._obtain(appid, secret, rejected=rejected)

    async def call(self, appid: str, secret: str, use: Callable[[str], Awaitable[T]]) -> T:
        """``use(token)``, once more with a newer token if it raises ``TokenRejected``."""
        token = await self.get(appid, secret)
        try:
            return await use(token)
        except TokenRejected as exc:
            self.metrics.token_retries.labels(str(exc.errcode)).inc()
            structlog.contextvars.bind_contextvars(wechat_token_rejected=exc.errcode)
            token = await self.token_rejected(appid, secret, token)
        return await use(token)

    async def _obtain(self, appid: str, secret: str, *, rejected: str | None) -> str:
        deadline = time.monotonic() + self._wait_timeout
        waited = False
        while True:
            cached = await self._read(appid)
            if self._good(cached, rejected, margin=REFRESH_BEFORE):
                assert cached is not None
                return cached.token
            fence = int(
                await self._lock(
                    [self._keys.wechat_token_lock(appid), self._keys.wechat_token_fence(appid)], [self._lock_ttl_ms]
                )
            )
            if fence:
                try:
                    return await self._refresh(appid, secret, fence, rejected)
                finally:
                    await self._unlock([self._keys.wechat_token_lock(appid)], [fence])
            # Another process is refreshing: a token that is still valid serves meanwhile (the overlap).
            if self._good(cached, rejected, margin=0.0):
                assert cached is not None
                return cached.token
            if not waited:
                waited = True
                self.metrics.token_waits.inc()
            if time.monotonic() > deadline:
                raise WechatUnavailable("no WeChat access token could be had in time; try again", retry_after=1)
            await asyncio.sleep(0.02)

    def _good(self, cached: _Cached | None, rejected: str | None, *, margin: float) -> bool:
        return cached is not None and cached.token != rejected and cached.expires_at - self._clock() > margin

    async def _refresh(self, appid: str, secret: str, fence: int, rejected: str | None) -> str:
        cached = await self._read(appid)
        if self._good(cached, rejected, margin=REFRESH_BEFORE):
            assert cached is not None
            return cached.token  # written by the refresher whose lock we took after
        token, expires_in = await self._fetch(appid, secret, force=False)
        if token == rejected:
            forced = self._keys.wechat_token_forced(appid)
            if not await self._redis.set(forced, str(fence), nx=True, px=int(FORCE_EVERY * 1000)):
                wait = await self._redis.pttl(forced)
                raise WechatUnavailable(
                    "WeChat keeps rejecting its own access token and a forced refresh was made moments ago; try again",
                    retry_after=max(1, math.ceil(max(wait, 0) / 1000)),
                )
            log.warning("wechat_token_force_refresh", appid=appid)
            token, expires_in = await self._fetch(appid, secret, force=True)
        expires_at = self._clock() + expires_in
        sealed = self._seal.seal(token.encode(), _PURPOSE) if self._seal is not None else token.encode()
        written = await self._store(
            [self._keys.wechat_token(appid), self._keys.wechat_token_lock(appid)],
            [fence, sealed, int(expires_at * 1000), int(expires_in * 1000)],
        )
        if not written:
            log.warning("wechat_token_store_fenced_off", appid=appid, fence=fence)
        return token

    async def _read(self, appid: str) -> _Cached | None:
        token, expires_at_ms = await self._redis.hmget(self._keys.wechat_token(appid), ["token", "expires_at_ms"])
        if token is None or expires_at_ms is None:
            return None
        stored = token if isinstance(token, bytes) else token.encode()
        raw = self._seal.open(stored, _PURPOSE) if self._seal is not None else stored
        return _Cached(raw.decode(), int(expires_at_ms) / 1000)

    async def _fetch(self, appid: str, secret: str, *, force: bool) -> tuple[str, int]:
        """One stable_token call; WeChat's answer, or our error for its failure."""
        mode = "force" if force else "normal"
        body = {"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": force}
        try:
            async with self._session.post(
                self._url, json=body, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.metrics.token_refreshes.labels(mode, "unreachable").inc()
            raise WechatUnavailable(
                "WeChat's stable_token did not answer ({reason})", retry_after=1, reason=type(exc).__name__
            ) from None
        if status != 200:
            self.metrics.token_refreshes.labels(mode, "http_error").inc()
            raise WechatUnavailable("WeChat's stable_token answered HTTP {status}", retry_after=1, status=status)
        try:
            answer = _decoder.decode(raw)
        except msgspec.DecodeError:
            self.metrics.token_refreshes.labels(mode, "bad_answer").inc()
            raise UpstreamError("WeChat's stable_token answered with something that is not its JSON") from None
        if answer.errcode or not answer.access_token or answer.expires_in <= 0:
            self.metrics.token_refreshes.labels(mode, "errcode").inc()
            structlog.contextvars.bind_contextvars(wechat_token_errcode=answer.errcode)
            detail = f"WeChat {answer.errcode}: {answer.errmsg}"
            if answer.errcode in _CONFIG_ERRORS:
                raise WechatConfigError(
                    "WeChat refused the application's credentials for its access token ({detail})", detail=detail
                )
            raise WechatUnavailable("WeChat gave no access token ({detail}); try again", retry_after=1, detail=detail)
        self.metrics.token_refreshes.labels(mode, "ok").inc()
        return answer.access_token, answer.expires_in
