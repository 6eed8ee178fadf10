"""Form bodies and HTTP Basic client credentials, read alike by the gateway's OAuth routes and by the user store's
introspection route (RFC 6749 §2.3.1, RFC 7662 §2.1)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl

from shared.errors import BadRequest

FORM = "application/x-www-form-urlencoded"


def form_fields(body: bytes) -> list[tuple[str, str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body, blank ones included."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadRequest("the form body is not valid UTF-8") from None


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """``(client_id, client_secret)`` of an ``Authorization: Basic`` header; None for another scheme or none."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    return basic_pair(encoded.strip())


def basic_pair(encoded: str) -> tuple[str, str]:
    """``(user, password)`` of an HTTP Basic credential (the part after "Basic ")."""
    # A str with non-ASCII makes b64decode raise a plain ValueError (not binascii.Error): the 500 fuzzing found.
    if not encoded.isascii():
        raise BadRequest("the Authorization header is not valid HTTP Basic")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest("the Authorization header is not valid HTTP Basic") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise BadRequest("the Authorization header is not valid HTTP Basic")
    return client_id, secret
