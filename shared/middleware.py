"""What every HTTP service of minidoor does with a request the same way: the request id, the one log line a request
ends with, and the error middleware that turns any exception into the service's error body.

Each service stacks, outermost first: ``request_log``, its metrics, ``error_middleware(render)`` with its own
renderer (the gateway picks OAuth's or Casdoor's body by route; the user store answers ``ErrorBody``), then its
input checks. The log line carries ``request_id``, ``method``, ``route``, ``status``, ``outcome`` (``ok`` or the
OAuth error code) and ``duration_ms``; a routed path is its route's pattern (``/internal/applications/{client_id}``),
any other shows as ``unmatched`` with the path cut short (``guard.log_path``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from shared.errors import BadRequest, MinidoorError, NotFound
from shared.guard import log_path
from shared.messages import ErrorBody

log = structlog.get_logger()

REQUEST_ID_HEADER = "X-Request-Id"
#: Per request: the request id, the caller's ``X-Request-Id`` when it looks like one, else a new one.
REQUEST_ID = web.RequestKey("request_id", str)
#: A caller's request id is echoed only if it looks like one; anything else is replaced, never logged raw.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Probed every few seconds by orchestrators and scrapers: logged at debug so they do not drown the real traffic.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_encoder = msgspec.json.Encoder()

#: Renders a ``MinidoorError`` as the service's error response.
Renderer = Callable[[web.Request, MinidoorError], web.Response]


def valid_request_id(value: str) -> bool:
    """Whether a caller's request id may be echoed and logged (the one rule, for headers and batch bodies alike)."""
    return bool(_REQUEST_ID.match(value))


def request_id_of(request: web.Request) -> str:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if valid_request_id(incoming) else uuid.uuid4().hex


def route_of(request: web.Request) -> str:
    """The route's pattern, the same label for every id in the path; ``unmatched`` for a path no route has."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id and the route for every log line of the request, and log one line when it ends."""
    request_id = request_id_of(request)
    route = route_of(request)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=request.method, route=route)
    if route == "unmatched":
        structlog.contextvars.bind_contextvars(path=log_path(request))
    request[REQUEST_ID] = request_id
    start = time.perf_counter()
    response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = request_id
    emit = log.debug if request.path in QUIET_PATHS and response.status < 500 else log.info
    outcome = structlog.contextvars.get_contextvars().get("outcome", "ok")
    emit("request", status=response.status, outcome=outcome, duration_ms=round((time.perf_counter() - start) * 1000, 2))
    return response


def error_middleware(render: Renderer) -> Middleware:
    """The one place where an exception becomes an answer: a ``MinidoorError`` is rendered by ``render`` (its
    ``error`` is the log line's ``outcome``), aiohttp's own HTTP errors (404, 405, 413, ...) become one, input no
    check foresaw is a 400, anything else a 500 with one ``unhandled_error`` line and its traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except MinidoorError as exc:
            return _rendered(request, exc, render)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error: MinidoorError
            if exc.status == 404:
                error = NotFound("no such endpoint: {method} {path}", method=request.method, path=log_path(request))
            else:
                error = MinidoorError(exc.reason, error="invalid_request", status=exc.status)
            response = _rendered(request, error, render)
            if allow := exc.headers.get("Allow"):
                response.headers["Allow"] = allow
            return response
        except (RecursionError, UnicodeError):
            # Input no check foresaw (nesting, bytes that are not UTF-8): the client's fault, never a 500.
            return _rendered(request, BadRequest("the request could not be decoded"), render)
        except Exception:
            log.exception("unhandled_error")
            error = MinidoorError("internal error; the request id identifies it in the logs")
            return _rendered(request, error, render)

    return middleware


def _rendered(request: web.Request, exc: MinidoorError, render: Renderer) -> web.Response:
    structlog.contextvars.bind_contextvars(outcome=exc.error, error_description=exc.description)
    return render(request, exc)


def error_body(exc: MinidoorError, *, description: str | None = None, with_message: bool = False) -> web.Response:
    """OAuth's ``{error, error_description}`` (RFC 6749 §5.2) with the error's status and ``Retry-After``; never
    cached. ``description`` replaces the English one (a translation); ``with_message`` adds the template and its
    fields, for a caller that translates (the user store's answers to the gateway); a message without fields is its
    own template, and goes as the description alone."""
    body = ErrorBody(
        error=exc.error,
        error_description=exc.description if description is None else description,
        message=exc.message if with_message and exc.params else "",
        params=exc.params if with_message else {},
    )
    response = web.Response(
        body=_encoder.encode(body),
        status=exc.status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
