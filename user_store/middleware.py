"""The user store's middlewares: its error renderer (``ErrorBody``), the end user's address for the log, and
internal authentication. The request log line and the request id are ``shared.middleware.request_log``, as in every
service."""

from __future__ import annotations

import hmac
import ipaddress

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from shared.errors import MinidoorError, Unauthorized
from shared.middleware import error_body
from shared.middleware import error_middleware as _error_middleware
from shared.user_store_client import CLIENT_IP_HEADER
from user_store.appkeys import CONFIG


def render_error(request: web.Request, exc: MinidoorError) -> web.Response:
    """Every error of the internal API is ``ErrorBody``; callers (``shared/user_store_client.py``) map it back."""
    return error_body(exc, with_message=True)


error_middleware = _error_middleware(render_error)


def client_ip(value: str) -> str:
    """The end user's address as the gateway sent it, normalised; "" for anything that is not an IP address."""
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        return ""


@web.middleware
async def client_ip_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The end user's address as the gateway saw it, on every log line of the request: for the audit log
    (``user_store/audit.py``) and the request line."""
    if address := client_ip(request.headers.get(CLIENT_IP_HEADER, "")):
        structlog.contextvars.bind_contextvars(client_ip=address)
    return await handler(request)


#: Internal routes a service on the private network calls with its application's client credentials, checked by
#: the view: the internal token is neither needed nor enough there (``views/introspection.py``).
CLIENT_AUTHENTICATED_PATHS = frozenset({"/internal/tokens/introspect"})


@web.middleware
async def internal_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/internal/*`` request must carry ``Authorization: Bearer <internal_token>`` (or, during a rollover,
    ``INTERNAL_TOKEN_PREVIOUS``), but those of ``CLIENT_AUTHENTICATED_PATHS``."""
    if request.path.startswith("/internal/") and request.path not in CLIENT_AUTHENTICATED_PATHS:
        config = request.app[CONFIG]
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        tokens = [config.internal_token, *([config.internal_token_previous] if config.internal_token_previous else [])]
        # Both compared every time, so the timing does not tell which one matched.
        matches = [hmac.compare_digest(given, f"Bearer {token}".encode()) for token in tokens]
        if not any(matches):
            raise Unauthorized("a valid internal bearer token is required", error="invalid_token")
    return await handler(request)
