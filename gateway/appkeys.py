"""Typed keys of the gateway's app state and per-request state (aiohttp ``AppKey`` and ``RequestKey``).

Not to be confused with Redis key names (``shared/redis_keys.py``) or signing keys (the user store's).
The value types are imported for type checking only, so any gateway module may import this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from shared import middleware as shared_middleware

if TYPE_CHECKING:
    from collections.abc import Mapping

    import redis.asyncio as aioredis

    from gateway.applications import ApplicationCache
    from gateway.introspector import Introspector
    from gateway.limits import GatewayLimits
    from gateway.login_jobs import JobPublisher, ReplyWaiter
    from gateway.metrics import GatewayMetrics
    from shared.config import GatewayConfig
    from shared.i18n import Catalogue
    from shared.ratelimit import RateLimiter
    from shared.redis_batch import RedisBatcher
    from shared.redis_keys import RedisKeys
    from shared.user_store_client import UserStoreClient
    from shared.verifier import Verifier

CONFIG: web.AppKey[GatewayConfig] = web.AppKey("config")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
REDIS_KEYS: web.AppKey[RedisKeys] = web.AppKey("redis_keys")
#: The login path's script calls (rate limits, publishes, marks) share round trips (``shared/redis_batch.py``).
REDIS_BATCHER: web.AppKey[RedisBatcher] = web.AppKey("redis_batcher")
USER_STORE: web.AppKey[UserStoreClient] = web.AppKey("user_store")
#: client_id -> application, cached briefly (``gateway/applications.py``).
APPLICATIONS: web.AppKey[ApplicationCache] = web.AppKey("applications")
#: Publishes code-exchange jobs (``gateway/login_jobs.py``) and waits on ``REPLIES`` for the answer.
PUBLISHER: web.AppKey[JobPublisher] = web.AppKey("publisher")
REPLIES: web.AppKey[ReplyWaiter] = web.AppKey("replies")
#: Checks bearer access tokens locally (``shared.verifier``), for the per-user limits and introspection.
VERIFIER: web.AppKey[Verifier] = web.AppKey("verifier")
#: Answers introspection from ``VERIFIER`` when it can, else asks the user store (``gateway/introspector.py``).
INTROSPECTOR: web.AppKey[Introspector] = web.AppKey("introspector")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
LIMITS: web.AppKey[GatewayLimits] = web.AppKey("limits")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
#: Error descriptions in other languages than English, by language, read once at start (``shared/i18n.py``).
CATALOGUES: web.AppKey[Mapping[str, Catalogue]] = web.AppKey("catalogues")
#: The OpenAPI document, encoded once (``gateway/openapi.py``).
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi")

#: Per request: the request id (``shared.middleware.request_log``).
REQUEST_ID = shared_middleware.REQUEST_ID
#: Per request: the client's address as ``limits.request_ip`` decided it (TRUSTED_PROXIES), set by the rate-limit
#: middleware before any view runs; views pass it on for the audit log.
CLIENT_IP: web.RequestKey[str] = web.RequestKey("client_ip")
#: Per request on the token endpoint: which grant it was ("wechat_miniprogram" or "refresh_token"), for metrics.
TOKEN_GRANT: web.RequestKey[str] = web.RequestKey("token_grant")
#: Per request: what ``params.read_oauth_params`` and ``params.read_account_params`` parsed, so the rate-limit
#: middleware's read of the credentials and the view's are one parse of the body.
OAUTH_PARAMS: web.RequestKey[dict[str, str]] = web.RequestKey("oauth_params")
ACCOUNT_PARAMS: web.RequestKey[dict[str, str]] = web.RequestKey("account_params")
