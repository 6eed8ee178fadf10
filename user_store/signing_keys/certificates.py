"""The X.509 certificate a Casdoor server SDK is configured with, per application.

Casdoor's SDKs verify a token with one PEM certificate and ``audience = clientId``. Every minidoor application's
tokens are signed by the current signing key, and each key has a self-signed certificate (``keyring``), so an
application's certificate is the current key's. After ``rotate-keys``, the new key's certificate replaces it once the
key activates: SDKs given the old one then refuse new tokens (a JWKS-based verifier follows rotations by itself).
"""

from __future__ import annotations

import msgspec

from shared.errors import NotFound
from user_store import admin
from user_store.db import Conn
from user_store.signing_keys import keyring
from user_store.signing_keys.material import KEY_BITS
from user_store.signing_keys.signer import ALGORITHM


class Certificate(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Shaped like Casdoor's Cert object (``name`` is the JWT ``kid``), plus the application it serves."""

    name: str
    type: str
    crypto_algorithm: str
    bit_size: int
    certificate: str
    application: str
    organization: str
    client_id: str


async def current_certificate(conn: Conn) -> tuple[str, str]:
    """``(kid, PEM)`` of the key that signs now; ``NotFound`` before the user store first started."""
    current = next((key for key in await keyring.list_keys(conn) if key.status == "current"), None)
    pem = None
    if current is not None:
        pem = await conn.fetchval("SELECT certificate_pem FROM signing_keys WHERE kid = $1", current.kid)
    if current is None or not pem:
        raise NotFound("no signing key has a certificate yet; start the user store (make run) once")
    return current.kid, pem


async def application_certificate(conn: Conn, application: str) -> Certificate:
    """The certificate to configure ``application``'s Casdoor SDK with; ``NotFound`` for an unknown application."""
    app = await admin.get_application(conn, application)
    kid, pem = await current_certificate(conn)
    return Certificate(
        name=kid,
        type="x509",
        crypto_algorithm=ALGORITHM,
        bit_size=KEY_BITS,
        certificate=pem,
        application=app.name,
        organization=app.organization,
        client_id=app.client_id,
    )
