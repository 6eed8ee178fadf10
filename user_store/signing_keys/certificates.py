"""The X.509 certificate a Casdoor server SDK is configured with, per application.

Casdoor's SDKs verify a token with one PEM certificate and ``audience = clientId``. Every minidoor application's
tokens are signed by the current key of its algorithm (``signing_alg``: RS256 or ES256), and each key has a
self-signed certificate (``keyring``), so an application's certificate is that key's. After ``rotate-keys``, the new
key's certificate replaces it once the key activates: SDKs given the old one then refuse new tokens (a JWKS-based
verifier follows rotations by itself).
"""

from __future__ import annotations

import msgspec

from shared.errors import NotFound
from shared.jwtcheck import SigningAlg
from user_store import admin
from user_store.db import Conn
from user_store.signing_keys import keyring
from user_store.signing_keys.material import KEY_BITS


class Certificate(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Shaped like Casdoor's Cert object (``name`` is the JWT ``kid``), plus the application it serves."""

    name: str
    type: str
    #: RS256 or ES256, as Casdoor names a cert's algorithm; ``bit_size`` is 2048 or 256 (the curve's).
    crypto_algorithm: str
    bit_size: int
    certificate: str
    application: str
    organization: str
    client_id: str


async def current_certificate(conn: Conn, alg: SigningAlg = "RS256") -> tuple[str, str]:
    """``(kid, PEM)`` of the ``alg`` key that signs now; ``NotFound`` before the user store made one."""
    found = await keyring.current_certificate(conn, alg)
    if found is None:
        raise NotFound("no {alg} signing key has a certificate yet; start the user store (make run) once", alg=alg)
    return found


async def application_certificate(conn: Conn, application: str) -> Certificate:
    """The certificate to configure ``application``'s Casdoor SDK with; ``NotFound`` for an unknown application."""
    app = await admin.get_application(conn, application)
    kid, pem = await current_certificate(conn, app.signing_alg)
    return Certificate(
        name=kid,
        type="x509",
        crypto_algorithm=app.signing_alg,
        bit_size=KEY_BITS[app.signing_alg],
        certificate=pem,
        application=app.name,
        organization=app.organization,
        client_id=app.client_id,
    )
