"""Errors that carry their own wire form.

Every error a client may see is a ``MinidoorError``: an HTTP status, an OAuth ``error`` code and a human
``description``. Views and workers raise them; one middleware per app renders them.

A description is written as an English template, its fields given as keywords, never as an f-string:
``NotFound("organization {name!r} does not exist", name=name)``. The template (``message``) is the msgid of the
message catalogue (``shared/locale``) and ``params`` its values, both carried across processes next to the English
``description``, so that the gateway answers in the caller's language (``shared/i18n.py``). The keywords ``error``,
``status`` and ``retry_after`` are the error's own, never a field's.

    MinidoorError
    ├── BadRequest           400 invalid_request
    │   ├── InvalidGrant     400 invalid_grant
    │   └── PayloadTooLarge  413 invalid_request
    ├── UnsupportedMediaType 415 invalid_request
    ├── Unauthorized         401 invalid_client (plus WWW-Authenticate)
    │   └── InvalidToken     401 invalid_token (a bearer token that is not live)
    ├── Forbidden            403 access_denied
    ├── NotFound             404 not_found
    ├── Conflict             409 conflict
    ├── RateLimited          429 temporarily_unavailable (plus Retry-After)
    ├── UpstreamError        502 server_error
    ├── Unavailable          503 temporarily_unavailable (plus Retry-After)
    └── DeadlineExceeded     504 temporarily_unavailable
"""

from __future__ import annotations

#: A value filling a field of an error's template: text or a number, the same in every language.
Param = str | int | float


class MinidoorError(Exception):
    status: int = 500
    error: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        **params: Param,
    ) -> None:
        description = message.format(**params) if params else message
        super().__init__(description)
        #: The English template, the catalogue's msgid; ``description`` is it with ``params`` filled in.
        self.message = message
        self.params = params
        self.description = description
        if error is not None:
            self.error = error
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r}, {self.description!r})"


class BadRequest(MinidoorError):
    status = 400
    error = "invalid_request"


class InvalidGrant(BadRequest):
    error = "invalid_grant"


class PayloadTooLarge(BadRequest):
    status = 413


class UnsupportedMediaType(MinidoorError):
    status = 415
    error = "invalid_request"


class Unauthorized(MinidoorError):
    status = 401
    error = "invalid_client"


#: Casdoor's words for an account call without any credentials; clients written for Casdoor may compare them.
PLEASE_LOGIN = "Please login first"


class InvalidToken(Unauthorized):
    """RFC 6750 ``invalid_token``: expired, revoked, forged or malformed; raised by ``shared.verifier``."""

    error = "invalid_token"


class Forbidden(MinidoorError):
    status = 403
    error = "access_denied"


class NotFound(MinidoorError):
    status = 404
    error = "not_found"


class Conflict(MinidoorError):
    status = 409
    error = "conflict"


class RateLimited(MinidoorError):
    status = 429
    error = "temporarily_unavailable"


class UpstreamError(MinidoorError):
    status = 502
    error = "server_error"


class Unavailable(MinidoorError):
    status = 503
    error = "temporarily_unavailable"


class DeadlineExceeded(MinidoorError):
    status = 504
    error = "temporarily_unavailable"


_BY_STATUS: dict[int, type[MinidoorError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        RateLimited,
        UpstreamError,
        Unavailable,
        DeadlineExceeded,
    )
}


def error_from_wire(
    status: int,
    error: str,
    description: str,
    retry_after: int | None = None,
    *,
    message: str = "",
    params: dict[str, Param] | None = None,
) -> MinidoorError:
    """Rebuild an error that crossed a process boundary (a worker reply, a user-store response). ``message`` and
    ``params`` are its template and fields when the sender gave them (a sender older than them did not: then the
    description is its own template, which translates a message without fields)."""
    cls = InvalidGrant if error == "invalid_grant" else _BY_STATUS.get(status, MinidoorError)
    exc = cls(description, error=error, status=status if cls is MinidoorError else None, retry_after=retry_after)
    if message:
        exc.message = message
        exc.params = dict(params or {})
    return exc
