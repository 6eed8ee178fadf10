"""Typed keys for the gateway's app state."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from gateway.applications import ApplicationCache
from gateway.replies import ReplyWaiter
from shared.config import GatewayConfig
from shared.redis_keys import RedisKeys
from shared.user_store_client import UserStoreClient
from shared.verifier import Verifier

CONFIG = web.AppKey("config", GatewayConfig)
REDIS_KEYS = web.AppKey("redis_keys", RedisKeys)
REDIS = web.AppKey("redis", aioredis.Redis)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
APPLICATIONS = web.AppKey("applications", ApplicationCache)
REPLIES = web.AppKey("replies", ReplyWaiter)
USER_STORE = web.AppKey("user_store", UserStoreClient)
#: Checks bearer access tokens locally; see ``shared.verifier``.
VERIFIER = web.AppKey("verifier", Verifier)

#: Per request: the request id bound by ``middleware.request_context``.
REQUEST_ID = web.RequestKey("request_id", str)
#: Per request: the client's address as ``limits.request_ip`` decided it (TRUSTED_PROXIES), set by the rate-limit
#: middleware before any view runs; views pass it on for the audit log.
CLIENT_IP = web.RequestKey("client_ip", str)
#: Per request on the token endpoint: which grant it was ("wechat_miniprogram" or "refresh_token"), for metrics.
TOKEN_GRANT = web.RequestKey("token_grant", str)
#: Per request: what ``params.read_params`` and ``auth.read_params`` parsed, so the rate-limit middleware's read of
#: the credentials and the view's are one parse of the body.
OAUTH_PARAMS: web.RequestKey[dict[str, str]] = web.RequestKey("oauth_params")
ACCOUNT_PARAMS: web.RequestKey[dict[str, str]] = web.RequestKey("account_params")
