"""Request context (request id, one canonical log line) and the error middleware that renders errors: OAuth JSON
or Casdoor's envelope, by route (``render_error``)."""

from __future__ import annotations

import re
import time
import uuid

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import appkeys, envelope
from gateway.views import account
from shared.errors import BadRequest, MinidoorError, NotFound
from shared.guard import log_path
from shared.messages import ErrorBody
from shared.user_store_client import REQUEST_ID_HEADER

log = structlog.get_logger()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_json = msgspec.json.Encoder()


def error_response(exc: MinidoorError) -> web.Response:
    resp = web.Response(
        body=_json.encode(ErrorBody(error=exc.error, error_description=exc.description)),
        status=exc.status,
        content_type="application/json",
    )
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = 'Basic realm="OAuth2"'
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def render_error(request: web.Request, exc: MinidoorError) -> web.Response:
    """The one place that picks an error's wire form: Casdoor's envelope on its account routes (``/api/get-account``
    and the like, also for a wrong method there), OAuth's ``{error, error_description}`` on the OAuth endpoints
    (``/api/login/oauth/*``) and everywhere else, unknown paths included."""
    if request.path in account.ENVELOPE_PATHS:
        return envelope.error_response(exc)
    return error_response(exc)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id (the caller's ``X-Request-Id`` when sane) and log one line when the request ends."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=request.method, path=log_path(request))
    request[appkeys.REQUEST_ID] = request_id
    start = time.perf_counter()
    resp = await handler(request)
    resp.headers[REQUEST_ID_HEADER] = request_id
    if request.path not in ("/healthz", "/readyz", "/metrics"):
        log.info("request", status=resp.status, duration_ms=round((time.perf_counter() - start) * 1000, 2))
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MinidoorError as exc:
        structlog.contextvars.bind_contextvars(error=exc.error, error_description=exc.description)
        return render_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return render_error(request, NotFound(f"no such endpoint: {request.method} {log_path(request)}"))
        return render_error(request, MinidoorError(exc.reason, error="invalid_request", status=exc.status))
    except (RecursionError, UnicodeError):
        # Input no check foresaw (nesting, bytes that are not UTF-8): the client's fault, never a 500.
        return render_error(request, BadRequest("the request could not be decoded"))
    except Exception:
        log.exception("unhandled_error")
        return render_error(request, MinidoorError("internal error; the request id identifies it in the logs"))
