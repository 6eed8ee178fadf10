"""The gateway's error middleware and its renderer: OAuth JSON or Casdoor's envelope, by route. The request log line
and the request id are ``shared.middleware.request_log``, as in every service."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import CATALOGUES
from gateway.responses import envelope_error
from gateway.views.account import ENVELOPE_PATHS
from shared.errors import MinidoorError
from shared.i18n import DEFAULT_LANGUAGE, describe, preferred_language
from shared.middleware import error_body
from shared.middleware import error_middleware as _error_middleware

#: The tag an answer in each language carries in ``Content-Language``.
_CONTENT_LANGUAGE = {DEFAULT_LANGUAGE: "en", "zh": "zh-CN"}


def render_error(request: web.Request, exc: MinidoorError) -> web.Response:
    """The one place that picks an error's wire form: Casdoor's envelope on its account routes (``/api/get-account``
    and the like, also for a wrong method there), OAuth's ``{error, error_description}`` on the OAuth endpoints
    (``/api/login/oauth/*``) and everywhere else, unknown paths included. The description (``msg`` in the envelope)
    is in the language ``Accept-Language`` prefers, English when we do not speak it."""
    language = preferred_language(request.headers.get("Accept-Language"))
    catalogue = request.app.get(CATALOGUES, {}).get(language)
    description = describe(exc, catalogue)
    if request.path in ENVELOPE_PATHS:
        response = envelope_error(exc, description)
    else:
        response = error_body(exc, description=description)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="OAuth2"'
    response.headers["Content-Language"] = _CONTENT_LANGUAGE[language if catalogue is not None else DEFAULT_LANGUAGE]
    response.headers["Vary"] = "Accept-Language"
    return response


error_middleware = _error_middleware(render_error)
