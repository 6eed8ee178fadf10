"""The user store's middlewares: errors and the canonical log line, then internal authentication."""

from __future__ import annotations

import hmac
import ipaddress
import re
import time
import uuid

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from shared.errors import MinidoorError, Unauthorized
from shared.messages import ErrorBody
from shared.user_store_client import CLIENT_IP_HEADER, REQUEST_ID_HEADER
from user_store.appkeys import CONFIG

log = structlog.get_logger()

_encoder = msgspec.json.Encoder()
#: A caller's request id is echoed only if it looks like one; anything else is replaced, never logged raw.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Probed every few seconds by orchestrators: logged at debug so they do not drown the real traffic.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def error_response(status: int, error: str, description: str, retry_after: int | None = None) -> web.Response:
    response = web.Response(
        status=status,
        body=_encoder.encode(ErrorBody(error=error, error_description=description)),
        content_type="application/json",
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    error = "not_found" if exc.status == 404 else "invalid_request"
    response = error_response(exc.status, error, exc.reason)
    if allow := exc.headers.get("Allow"):
        response.headers["Allow"] = allow
    return response


def _client_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        return ""


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id, render every error as ``ErrorBody``, and log one line per request."""
    request_id = request.headers.get(REQUEST_ID_HEADER, "")
    if not _REQUEST_ID.match(request_id):
        request_id = uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    structlog.contextvars.bind_contextvars(request_id=request_id, method=request.method, route=route)
    if client_ip := _client_ip(request.headers.get(CLIENT_IP_HEADER, "")):
        # The end user's address as the gateway saw it: for the audit log (user_store/audit.py) and this log line.
        structlog.contextvars.bind_contextvars(client_ip=client_ip)
    start = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await handler(request)
        outcome = "ok"
    except MinidoorError as exc:
        response = error_response(exc.status, exc.error, exc.description, exc.retry_after)
        outcome = exc.error
    except web.HTTPException as exc:
        response = _from_http_exception(exc)
        outcome = "http_error"
    except (RecursionError, UnicodeError):
        # Input no check foresaw (nesting, bytes that are not UTF-8): the caller's fault, never a 500.
        response = error_response(400, "invalid_request", "the request could not be decoded")
        outcome = "invalid_request"
    except Exception:
        log.exception("unhandled_error")
        response = error_response(500, "server_error", "internal error")
        outcome = "server_error"
    response.headers[REQUEST_ID_HEADER] = request_id
    emit = log.debug if request.path in _QUIET_PATHS and response.status < 500 else log.info
    emit(
        "request",
        status=response.status,
        outcome=outcome,
        duration_ms=round((time.perf_counter() - start) * 1000, 2),
    )
    return response


@web.middleware
async def internal_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/internal/*`` request must carry ``Authorization: Bearer <internal_token>`` (or, during a rollover,
    ``INTERNAL_TOKEN_PREVIOUS``)."""
    if request.path.startswith("/internal/"):
        config = request.app[CONFIG]
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        tokens = [config.internal_token, *([config.internal_token_previous] if config.internal_token_previous else [])]
        # Both compared every time, so the timing does not tell which one matched.
        matches = [hmac.compare_digest(given, f"Bearer {token}".encode()) for token in tokens]
        if not any(matches):
            raise Unauthorized("a valid internal bearer token is required", error="invalid_token")
    return await handler(request)
