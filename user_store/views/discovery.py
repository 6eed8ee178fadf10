"""The JWKS (``GET /internal/keys/jwks``) and the OpenID discovery document (``GET /internal/openid-configuration``),
which the gateway serves under ``/.well-known/``."""

from __future__ import annotations

from aiohttp import web

from shared.jwtcheck import SIGNING_ALGORITHMS
from shared.messages import OpenIdConfiguration
from user_store.appkeys import CONFIG, SIGNER
from user_store.http import json_response
from user_store.signing_keys.signer import SCOPE

_CLAIMS = (
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "scope", "tokenType", "owner", "name", "displayName",
    "avatar",
)  # fmt: skip
_CLIENT_AUTH = ["client_secret_basic", "client_secret_post"]


async def jwks(request: web.Request) -> web.Response:
    return json_response(request.app[SIGNER].jwk_set())


def openid_configuration(issuer: str) -> OpenIdConfiguration:
    """The discovery document; every URL derives from the configured issuer, never from a request."""
    base = issuer.rstrip("/")
    return OpenIdConfiguration(
        issuer=issuer,
        token_endpoint=f"{base}/api/login/oauth/access_token",
        userinfo_endpoint=f"{base}/api/userinfo",
        jwks_uri=f"{base}/.well-known/jwks",
        introspection_endpoint=f"{base}/api/login/oauth/introspect",
        revocation_endpoint=f"{base}/api/login/oauth/revoke",
        end_session_endpoint=f"{base}/api/logout",
        response_types_supported=["token"],
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=list(SIGNING_ALGORITHMS),
        token_endpoint_auth_methods_supported=["none", *_CLIENT_AUTH],
        introspection_endpoint_auth_methods_supported=_CLIENT_AUTH,
        revocation_endpoint_auth_methods_supported=_CLIENT_AUTH,
        scopes_supported=[SCOPE],
        claims_supported=list(_CLAIMS),
    )


async def discovery(request: web.Request) -> web.Response:
    return json_response(openid_configuration(request.app[CONFIG].issuer))
