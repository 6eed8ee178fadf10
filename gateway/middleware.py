"""The gateway's error middleware and its renderer: OAuth JSON or Casdoor's envelope, by route. The request log line
and the request id are ``shared.middleware.request_log``, as in every service."""

from __future__ import annotations

from aiohttp import web

from gateway.responses import envelope_error
from gateway.views.account import ENVELOPE_PATHS
from shared.errors import MinidoorError
from shared.middleware import error_body
from shared.middleware import error_middleware as _error_middleware


def render_error(request: web.Request, exc: MinidoorError) -> web.Response:
    """The one place that picks an error's wire form: Casdoor's envelope on its account routes (``/api/get-account``
    and the like, also for a wrong method there), OAuth's ``{error, error_description}`` on the OAuth endpoints
    (``/api/login/oauth/*``) and everywhere else, unknown paths included."""
    if request.path in ENVELOPE_PATHS:
        return envelope_error(exc)
    response = error_body(exc)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="OAuth2"'
    return response


error_middleware = _error_middleware(render_error)
