"""Hostile input stops here, before any view: every service puts ``input_guard`` inside its error middleware.

What it refuses, each with a 4xx the error middleware renders: a body larger than the app's ``client_max_size``
or the route's own ``body_limit`` (read or not by the view), a body that does not arrive within
``BODY_READ_TIMEOUT`` (408), a body, query or header that is not UTF-8 (a ``binary`` route's body excepted), and
JSON nested deeper than ``MAX_JSON_DEPTH`` (msgspec decodes recursively). A client that
leaves mid-body gets no answer and no log line beyond the canonical one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from aiohttp import web, web_protocol, web_request, web_response
from aiohttp.typedefs import Handler

from shared.errors import BadRequest, MinidoorError, PayloadTooLarge, Unauthorized

#: Deeper than any document the API takes (three levels at most), far below what exhausts the C stack.
MAX_JSON_DEPTH = 32
#: Seconds a client has to deliver its body, when the app sets none in ``BODY_TIMEOUT`` (``BODY_READ_TIMEOUT``).
BODY_READ_TIMEOUT = 10.0
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_read_timeout", float)
#: No OAuth parameter the API takes is longer: tokens are under 2 KiB, avatars URLs under 1 KiB.
MAX_FIELD_CHARS = 4096
#: Client ids are minted as ``secrets.token_hex(10)``; older or imported ones are letters, digits, ``_`` and ``-``.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
#: What ``Server`` says on every response: no framework or Python version for a scanner to match.
SERVER_NAME = "minidoor"
#: The whole body of the 4xx aiohttp's parser answers for a request it cannot read (a NUL byte in a header, an
#: oversized line, a bad method): aiohttp's own page quotes the offending raw line, an Authorization header say.
PARSER_ERROR_BODY = b'{"error":"invalid_request","error_description":"the request is malformed and was not read"}'


class RequestTimeout(MinidoorError):
    status = 408
    error = "invalid_request"


class ClientGone(BadRequest):
    """The client closed the connection before its body arrived: nobody reads the answer, the canonical line
    records a 400, and no traceback is logged."""


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw``, strings ignored; valid JSON or not."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_text(raw: bytes, what: str) -> str:
    """``raw`` as UTF-8; ``BadRequest`` naming ``what`` when it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the {what} is not valid UTF-8", what=what) from None


def check_body(raw: bytes) -> None:
    """Refuse a body that is not UTF-8 or, when it looks like JSON, nests deeper than ``MAX_JSON_DEPTH``."""
    text = check_text(raw, "body")
    if text.lstrip()[:1] in ("[", "{") and json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest("the JSON body nests deeper than {max_json_depth} levels", max_json_depth=MAX_JSON_DEPTH)


def check_field(name: str, value: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise BadRequest(
            "the parameter {name!r} is longer than {max_field_chars} characters",
            name=name,
            max_field_chars=MAX_FIELD_CHARS,
        )


def valid_client_id(value: str) -> bool:
    """Whether ``value`` could be a client id at all: anything else is refused without a user-store lookup."""
    return _CLIENT_ID.fullmatch(value) is not None


def log_path(request: web.Request) -> str:
    """The path as a log line may show it: a routed path whole, any other (client-chosen) cut to 48 characters."""
    return request.path if request.match_info.route.resource is not None else request.path[:48]


def log_id(value: str) -> str:
    """A client-supplied identifier as it may appear in a log line: a short hash, never the value itself (an
    access token pasted as a client_id must not land in the logs)."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _check_head(request: web.Request) -> None:
    check_text(unquote_to_bytes(request.raw_path), "URL")
    for name, value in request.raw_headers:
        check_text(name, "header name")
        check_text(value, "header value")


@web.middleware
async def input_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse hostile input before the view runs, and read every body here so its size limit holds on every
    route. A route that takes larger (or binary) bodies declares so with ``body_limit``."""
    _check_head(request)
    rule = route_body_rule(request)
    if rule is not None:
        request = request.clone(client_max_size=rule.max_bytes)
    if request.content_length is not None and request.content_length > request.client_max_size:
        raise PayloadTooLarge(
            "the request body is larger than {client_max_size} bytes", client_max_size=request.client_max_size
        )
    if request.body_exists:
        timeout = request.app.get(BODY_TIMEOUT, BODY_READ_TIMEOUT)
        try:
            if request.content.is_eof():  # all of it came with the head, as a small form does: nothing to wait for
                raw = await request.read()
            else:
                async with asyncio.timeout(timeout):
                    raw = await request.read()
        except TimeoutError:
            raise RequestTimeout("the request body did not arrive within {timeout:g} s", timeout=timeout) from None
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                "the request body is larger than {client_max_size} bytes", client_max_size=request.client_max_size
            ) from None
        except (ConnectionError, OSError) as exc:
            raise ClientGone("the client closed the connection mid-body") from exc
        if rule is None or not rule.binary:
            check_body(raw)
    return await handler(request)


@dataclass(frozen=True, slots=True)
class BodyRule:
    """What a route's body may be, instead of the app's: ``max_bytes`` long, and bytes rather than UTF-8 text when
    ``binary`` (a file upload)."""

    max_bytes: int
    binary: bool = False


_BODY_RULE = "__minidoor_body_rule__"
_H = TypeVar("_H", bound=Callable[..., Any])


def body_limit(max_bytes: int, *, binary: bool = False) -> Callable[[_H], _H]:
    """Decorate a view: its route takes bodies up to ``max_bytes`` (every other limit of ``input_guard`` holds), and
    any bytes when ``binary``."""

    def declare(handler: _H) -> _H:
        setattr(handler, _BODY_RULE, BodyRule(max_bytes, binary))
        return handler

    return declare


def route_body_rule(request: web.Request) -> BodyRule | None:
    """The ``body_limit`` the matched route's view declared, if any."""
    rule = getattr(request.match_info.handler, _BODY_RULE, None)
    return rule if isinstance(rule, BodyRule) else None


def internal_only(request: web.Request, internal_token: str) -> None:
    """``Unauthorized`` unless the request carries ``Authorization: Bearer <internal_token>``."""
    expected = f"Bearer {internal_token}".encode()
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("a valid internal bearer token is required", error="invalid_token")


_aiohttp_handle_error = web_protocol.RequestHandler.handle_error


def _handle_error(
    self: web_protocol.RequestHandler,
    request: web_request.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp's ``handle_error`` (its log line, redacted by ``shared.logs``, and its checks), with a fixed body
    when it was given the parser's message: that message holds the raw request line or header it refused."""
    resp = _aiohttp_handle_error(self, request, status, exc, message)
    if message is None:
        return resp  # its own 500 and 504 pages say nothing of the request
    safe = web.Response(status=status, body=PARSER_ERROR_BODY, content_type="application/json")
    safe.force_close()
    return safe


def harden(app: web.Application, body_read_timeout: float = BODY_READ_TIMEOUT) -> None:
    """What every service's app gets: its body read timeout, no version banner and no echo of a refused request.

    Both answers come from aiohttp's module level, not the app: ``Server`` is filled from a module constant when a
    response has none, also on the 400s its parser answers before any app signal runs, and those 400s are built
    by ``RequestHandler.handle_error``, which no middleware sees. Replacing the two is the one place that covers
    every service.
    """
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
    web_protocol.RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
    app[BODY_TIMEOUT] = body_read_timeout
