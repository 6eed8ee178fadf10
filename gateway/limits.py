"""The gateway's rate limits (``shared.ratelimit``), applied by one middleware inside the error middleware.

Counted on every request: the token endpoint per client IP, and each wx.login() code (hashed). Counted on
failures only, and checked (without spending) before the request so an address over its budget stops reaching
the user store: failed client authentications per client_id and per IP (unknown client_ids included, so random
ids do not hammer the user store or churn the application cache), and rejected bearer tokens per IP. Profile
and password changes are counted per user (the bearer token's verified ``sub``).

Limits counted on every request fail open when Redis is away (logins must not depend on them); those counted
on failures fail closed, which only changes the answer to a request that already failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.account import ENVELOPE_PATHS
from gateway.auth import credentials
from gateway.metrics import LOGIN_PATH, METRICS
from gateway.params import read_params
from shared.config import GatewayConfig
from shared.errors import InvalidToken, MinidoorError, Unauthorized
from shared.ratelimit import IPNetwork, Limit, RateLimiter, client_ip, parse_networks


class GatewayLimits:
    def __init__(self, config: GatewayConfig) -> None:
        self.trusted = parse_networks(config.trusted_proxies)
        self.token_ip = Limit("token_ip", config.rate_limit_token_per_ip, 60)
        self.code = Limit("login_code", config.rate_limit_per_code, 300)
        self.client_failures = Limit("client_auth_failures", config.rate_limit_client_failures, 60, fail_open=False)
        self.ip_failures = Limit("client_auth_failures_ip", config.rate_limit_auth_failures_per_ip, 60, fail_open=False)
        self.bad_tokens = Limit("bad_tokens_ip", config.rate_limit_bad_tokens_per_ip, 60, fail_open=False)
        self.user_updates = Limit("user_updates", config.rate_limit_user_updates, 60)


LIMITS = web.AppKey("limits", GatewayLimits)
LIMITER = web.AppKey("limiter", RateLimiter)
#: Paths where a client authenticates with client_id (and a secret) in the form or HTTP Basic. The dedicated refresh
#: endpoint checks a secret as the refresh grant of the token endpoint does, so its failures count alike.
_CLIENT_PATHS = frozenset(
    {LOGIN_PATH, "/api/login/oauth/introspect", "/api/login/oauth/revoke", "/api/login/oauth/refresh_token"}
)
_USER_UPDATE_PATH = "/api/update-user"


def request_ip(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    return client_ip(request.remote, request.headers.get("X-Forwarded-For", ""), trusted)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    limits, limiter = app[LIMITS], app[LIMITER]
    ip = request_ip(request, limits.trusted)
    client_path = request.path in _CLIENT_PATHS
    if request.path == LOGIN_PATH:
        await limiter.check(limits.token_ip, ip)
    if client_path:
        await limiter.peek(limits.ip_failures, ip)
    # Only the account routes read bearer tokens: one sent to /.well-known/jwks is no credential to refuse.
    has_bearer = request.headers.get("Authorization", "")[:7].lower() == "bearer "
    if request.path in ENVELOPE_PATHS and (
        has_bearer or "access_token" in request.query or "accessToken" in request.query
    ):
        await limiter.peek(limits.bad_tokens, ip)
    if request.method == "POST" and request.path == _USER_UPDATE_PATH:
        await _user_update(request, limiter, limits, ip)
    if request.path == LOGIN_PATH and (code := (await read_params(request)).get("code", "")):
        await limiter.check(limits.code, code)
    try:
        return await handler(request)
    except Unauthorized as exc:
        # From the user store an invalid token comes back as an Unauthorized carrying invalid_token.
        if exc.error == InvalidToken.error:
            await limiter.check(limits.bad_tokens, ip)
        elif client_path or request.path in _ACCOUNT_CLIENT_PATHS:
            client_id = await _client_id(request)
            await limiter.check(limits.ip_failures, ip)
            if client_id:
                await limiter.check(limits.client_failures, client_id)
        raise


async def _user_update(request: web.Request, limiter: RateLimiter, limits: GatewayLimits, ip: str) -> None:
    """Per user: the bearer's verified ``sub``, so nobody can spend another user's budget with a forged token.
    An application's backend (client credentials) updating its users is not limited here."""
    caller = credentials(request, dict(request.query), required=False)
    if not caller.access_token:
        return
    try:
        claims = await request.app[keys.VERIFIER].verify(caller.access_token)
    except InvalidToken:
        return  # the user store refuses it; the handler's failure is counted against the IP
    except MinidoorError:
        return  # the verifier is not ready: the user store still authenticates
    await limiter.check(limits.user_updates, str(claims.get("sub", "")))


async def _client_id(request: web.Request) -> str:
    if request.path in _CLIENT_PATHS:
        return (await read_params(request)).get("client_id", "")
    return credentials(request, dict(request.query), required=False).client_id


#: Envelope routes a backend may call with client credentials.
_ACCOUNT_CLIENT_PATHS = frozenset({"/api/get-account", "/api/get-user", "/api/get-users", "/api/update-user"})


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    app[LIMITER] = RateLimiter(
        app[keys.REDIS], app[keys.REDIS_KEYS], on_limited=lambda name: metrics.rate_limited.labels(name).inc()
    )
    yield
