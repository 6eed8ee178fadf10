"""The gateway's rate limits (``shared.ratelimit``), applied by one middleware inside the error middleware.

Counted on every request: the token endpoint per client IP, and each wx.login() code (hashed). Counted on
failures only, and checked (without spending) before the request so an address over its budget stops reaching
the user store: failed client authentications per client_id and per IP (unknown client_ids included, so random
ids do not hammer the user store or churn the application cache), on every route that takes client credentials,
and rejected bearer tokens per IP, wherever the token was sent. Profile and password changes, avatar uploads and
encryptedData decryptions are counted per user (the bearer token's verified ``sub``); avatar downloads and WeChat's
message pushes per IP.
Each trip is audited, once per limit, key and period (``Origin``).

A request's checks before the view are one script call, and so are those after a failure (``check_all``).

Limits counted on every request fail open when Redis is away (logins must not depend on them); those counted
on failures fail closed, which only changes the answer to a request that already failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import appkeys, params
from gateway.metrics import LOGIN_PATH
from gateway.views import account, avatars, rights, wechat_data, wechat_push
from gateway.views.linking import LINK_PATH
from gateway.views.token import REFRESH_PATH
from shared.audit import AuditPublisher
from shared.config import GatewayConfig
from shared.errors import InvalidToken, MinidoorError, Unauthorized
from shared.messages import Credentials
from shared.ratelimit import Check, Limit, Origin, RateLimiter, client_ip, limiter_hash_key, parse_networks


class GatewayLimits:
    def __init__(self, config: GatewayConfig) -> None:
        self.trusted = parse_networks(config.trusted_proxies)
        self.hash_key = limiter_hash_key(config.stream_seal_key, config.internal_token)
        self.token_ip = Limit("token_ip", config.rate_limit_token_per_ip, 60)
        self.code = Limit("login_code", config.rate_limit_per_code, 300)
        self.client_failures = Limit("client_auth_failures", config.rate_limit_client_failures, 60, fail_open=False)
        self.ip_failures = Limit("client_auth_failures_ip", config.rate_limit_auth_failures_per_ip, 60, fail_open=False)
        self.bad_tokens = Limit("bad_tokens_ip", config.rate_limit_bad_tokens_per_ip, 60, fail_open=False)
        self.user_updates = Limit("user_updates", config.rate_limit_user_updates, 60)
        self.account_rights = Limit("account_rights", config.rate_limit_account_rights, 60)
        self.avatar_uploads = Limit("avatar_uploads", config.rate_limit_avatar_uploads, 60)
        self.wechat_data = Limit("wechat_data", config.rate_limit_wechat_data, 60)
        self.avatars_ip = Limit("avatars_ip", config.rate_limit_avatars_per_ip, 60)
        self.wechat_push_ip = Limit("wechat_push_ip", config.rate_limit_wechat_push_per_ip, 60)

    def per_user(self, path: str) -> Limit | None:
        """The limit a POST to ``path`` spends per user (the bearer's verified ``sub``), if any."""
        return {
            _USER_UPDATE_PATH: self.user_updates,
            avatars.UPLOAD_PATH: self.avatar_uploads,
            wechat_data.DECRYPT_PATH: self.wechat_data,
        }.get(path)


#: OAuth endpoints where a client authenticates with client_id (and a secret) in the form, JSON or HTTP Basic.
OAUTH_CLIENT_PATHS = frozenset({LOGIN_PATH, REFRESH_PATH, "/api/login/oauth/introspect", "/api/login/oauth/revoke"})
_USER_UPDATE_PATH = "/api/update-user"
#: Routes whose body is a user object: their credentials come from the query and the headers only.
_QUERY_CREDENTIAL_PATHS = frozenset({_USER_UPDATE_PATH, rights.DELETE_USER_PATH})
#: Users' rights routes, limited per user (the bearer's verified ``sub``): each is a heavy read or an erasure.
_ACCOUNT_RIGHTS_PATHS = frozenset({rights.DELETE_ACCOUNT_PATH, rights.EXPORT_ACCOUNT_PATH})


def request_ip(request: web.Request) -> str:
    """The client's address: the one answer for rate limits, audit rows and the worker's jobs. ``X-Forwarded-For``
    counts only from ``TRUSTED_PROXIES`` (``shared.ratelimit.client_ip``); every header line of it is read, as a
    proxy may add its own line after the client's."""
    ip = request.get(appkeys.CLIENT_IP)
    if ip is None:
        forwarded = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        ip = client_ip(request.remote, forwarded, request.app[appkeys.LIMITS].trusted)
        request[appkeys.CLIENT_IP] = ip
    return ip


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    limits, limiter = app[appkeys.LIMITS], app[appkeys.LIMITER]
    ip = request_ip(request)
    read = await _caller(request)
    caller, code = read or (Credentials(), "")
    known = app[appkeys.APPLICATIONS].peek(caller.client_id) if caller.client_id else None
    origin = Origin.of(
        client_ip=ip,
        request_id=request[appkeys.REQUEST_ID],
        client_id=caller.client_id,
        application=known.name if known else "",
        organization=known.organization if known else "",
    )
    # Mini programs send their client_id on the token endpoint; account routes authenticate a client only when
    # it sent client credentials (a user sends a token), or credentials that cannot even be read.
    client_auth = request.path in OAUTH_CLIENT_PATHS or read is None or bool(caller.client_id or caller.client_secret)
    checks: list[Check] = []
    if request.path in (LOGIN_PATH, LINK_PATH):  # both present a code to WeChat
        checks.append(Check(limits.token_ip, ip))
    elif request.path.startswith(avatars.AVATAR_PREFIX):
        checks.append(Check(limits.avatars_ip, ip))
    elif request.path.startswith(wechat_push.PUSH_PREFIX):
        checks.append(Check(limits.wechat_push_ip, ip))
    if client_auth:
        checks.append(Check(limits.ip_failures, ip, cost=0))
    # Only the account routes read bearer tokens: one sent elsewhere (the JWKS, the metrics) spends nothing.
    if caller.access_token and request.path in account.ENVELOPE_PATHS:
        checks.append(Check(limits.bad_tokens, ip, cost=0))
    if code:  # the token endpoint's, and delete-account's proof code: the order of checks is unchanged
        checks.append(Check(limits.code, code))
    await limiter.check_all(checks, origin)
    per_user = limits.per_user(request.path) if request.method == "POST" and caller.access_token else None
    if per_user is None and request.path in _ACCOUNT_RIGHTS_PATHS and caller.access_token:
        per_user = limits.account_rights
    if per_user is not None:
        await _per_user(request, limiter, per_user, caller.access_token, origin)
    try:
        return await handler(request)
    except Unauthorized as exc:
        # From the user store an invalid token comes back as an Unauthorized carrying invalid_token.
        if exc.error == InvalidToken.error:
            await limiter.check(limits.bad_tokens, ip, origin)
        elif client_auth:
            failures = [Check(limits.ip_failures, ip)]
            if caller.client_id:
                failures.append(Check(limits.client_failures, caller.client_id))
            await limiter.check_all(failures, origin)
        raise


async def _caller(request: web.Request) -> tuple[Credentials, str] | None:
    """The credentials the route's view will read, as it reads them, and the login code on the token endpoint;
    None for input the view will refuse (a client id that cannot be valid, say): the view then raises inside the
    middleware's ``try``, where the failure is counted."""
    try:
        if request.path in OAUTH_CLIENT_PATHS:
            oauth = await params.read_oauth_params(request)
            found = Credentials(client_id=oauth.get("client_id", ""), client_secret=oauth.get("client_secret", ""))
            return found, oauth.get("code", "") if request.path == LOGIN_PATH else ""
        if request.path in account.ENVELOPE_PATHS:
            # update-user's body is the user object; its credentials come from the query and the headers only.
            query = (
                dict(request.query)
                if request.path in _QUERY_CREDENTIAL_PATHS
                else await params.read_account_params(request)
            )
            code = query.get("code", "") if request.path in (rights.DELETE_ACCOUNT_PATH, LINK_PATH) else ""
            return params.caller_credentials(request, query, required=False), code
    except MinidoorError:
        return None
    return Credentials(), ""


async def _per_user(request: web.Request, limiter: RateLimiter, limit: Limit, token: str, origin: Origin) -> None:
    """Per user: the bearer's verified ``sub``, so nobody can spend another user's budget with a forged token.
    An application's backend (client credentials) acting on its users is not limited here."""
    try:
        claims = await request.app[appkeys.VERIFIER].verify(token)
    except InvalidToken:
        return  # the user store refuses it; the handler's failure is counted against the IP
    except MinidoorError:
        return  # the verifier is not ready: the user store still authenticates
    await limiter.check(limit, str(claims.get("sub", "")), origin)


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    metrics = app[appkeys.METRICS]
    audit = AuditPublisher(app[appkeys.REDIS], app[appkeys.REDIS_KEYS])
    app[appkeys.LIMITER] = RateLimiter(
        app[appkeys.REDIS],
        app[appkeys.REDIS_KEYS],
        app[appkeys.LIMITS].hash_key,
        audit=audit,
        on_limited=lambda name: metrics.rate_limited.labels(name).inc(),
        batcher=app[appkeys.REDIS_BATCHER],
    )
    yield
    await audit.close()
