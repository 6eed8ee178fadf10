"""``/.well-known/jwks`` and ``/.well-known/openid-configuration`` at the gateway, as clients that poll them see
them, and PyJWT's ``PyJWKClient`` verifying our tokens against them unchanged."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.oauth_helpers import kid_of, stack_login


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    async with session.get(url, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body), resp.headers


class TestJwks:
    async def test_every_key_has_the_casdoor_fields(self, session, stack):
        """Each JWK has exactly kty, kid, alg, use "sig", n, e and x5c, and the current token's kid is listed."""
        token = (await stack_login(session, stack, "o-jwks"))["access_token"]
        doc, _ = await get_json(session, stack.gateway + "/.well-known/jwks")
        assert doc["keys"]
        for key in doc["keys"]:
            assert set(key) == {"kty", "kid", "alg", "use", "n", "e", "x5c"}
            assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
        assert kid_of(token) in {key["kid"] for key in doc["keys"]}

    async def test_x5c_certificate_holds_the_same_key(self, session, stack):
        """x5c[0] is a base64 DER X.509 certificate whose public key is the JWK's n and e."""
        doc, _ = await get_json(session, stack.gateway + "/.well-known/jwks")
        for key in doc["keys"]:
            cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
            from_cert, from_jwk = cert.public_key(), RSAAlgorithm.from_jwk(key)
            assert isinstance(from_cert, rsa.RSAPublicKey) and isinstance(from_jwk, rsa.RSAPublicKey)
            assert from_cert.public_numbers() == from_jwk.public_numbers()
            assert key["kid"] in cert.subject.rfc4514_string()

    async def test_cache_headers_and_etag(self, session, stack):
        """The JWKS is publicly cacheable for a minute, with an ETag a poller can revalidate (304)."""
        _, headers = await get_json(session, stack.gateway + "/.well-known/jwks")
        assert headers["Cache-Control"] == "public, max-age=60"
        etag = headers["ETag"]
        async with session.get(stack.gateway + "/.well-known/jwks", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert await resp.read() == b""
        async with session.get(stack.gateway + "/.well-known/jwks", headers={"If-None-Match": '"stale"'}) as resp:
            assert resp.status == 200

    async def test_pyjwkclient_verifies_our_tokens(self, session, stack):
        """PyJWT's PyJWKClient, used as its docs say, finds the key and verifies a real access token."""
        token = (await stack_login(session, stack, "o-pyjwk"))["access_token"]

        def verify() -> dict[str, Any]:
            client = jwt.PyJWKClient(stack.gateway + "/.well-known/jwks")
            signing_key = client.get_signing_key_from_jwt(token)
            return dict(
                jwt.decode(
                    token,
                    signing_key.key,
                    algorithms=["RS256"],
                    audience=stack.demo["clientId"],
                    issuer=stack.gateway,
                )
            )

        claims = await asyncio.to_thread(verify)
        assert claims["tokenType"] == "access-token"


class TestDiscovery:
    async def test_document(self, session, stack):
        """The discovery document names the configured issuer and every token endpoint under it."""
        doc, headers = await get_json(session, stack.gateway + "/.well-known/openid-configuration")
        issuer = stack.gateway
        assert doc["issuer"] == issuer
        assert doc["token_endpoint"] == issuer + "/api/login/oauth/access_token"
        assert doc["userinfo_endpoint"] == issuer + "/api/userinfo"
        assert doc["jwks_uri"] == issuer + "/.well-known/jwks"
        assert doc["introspection_endpoint"] == issuer + "/api/login/oauth/introspect"
        assert doc["revocation_endpoint"] == issuer + "/api/login/oauth/revoke"
        assert doc["end_session_endpoint"] == issuer + "/api/logout"
        assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
        assert "client_secret_basic" in doc["introspection_endpoint_auth_methods_supported"]
        assert headers["Cache-Control"] == "public, max-age=3600"
        assert headers["ETag"]

    async def test_issuer_ignores_the_host_header(self, session, stack):
        """A forged Host header changes nothing: the issuer comes from configuration (unlike Casdoor)."""
        doc, _ = await get_json(
            session,
            stack.gateway + "/.well-known/openid-configuration",
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
        assert doc["issuer"] == stack.gateway
        assert "evil" not in str(doc)

    async def test_jwks_uri_serves_the_keys(self, session, stack):
        """A client following jwks_uri from discovery gets the key set."""
        doc, _ = await get_json(session, stack.gateway + "/.well-known/openid-configuration")
        keys, _ = await get_json(session, doc["jwks_uri"])
        assert keys["keys"]
