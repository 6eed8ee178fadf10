"""``/.well-known/jwks`` and ``/.well-known/openid-configuration`` at the gateway, as clients that poll them see
them, and PyJWT's ``PyJWKClient`` verifying our tokens against them unchanged: RS256 ones of the demo application
and ES256 ones of an application that signs so."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.account_helpers import account
from tests.oauth_helpers import basic, introspect, kid_of, make_app, stack_login, stack_verifier
from tests.stack import Stack

#: The members of each type's JWK, as Casdoor publishes them.
JWK_MEMBERS = {
    "RSA": {"kty", "kid", "alg", "use", "n", "e", "x5c"},
    "EC": {"kty", "kid", "alg", "use", "crv", "x", "y", "x5c"},
}


@pytest.fixture(scope="module")
def es_app(stack: Stack) -> dict[str, str]:
    """An application of the demo organization that signs ES256 (``create-app --alg ES256``)."""
    return make_app(stack, "jwks-es256", alg="ES256")


async def es_login(session: aiohttp.ClientSession, stack: Stack, es_app: dict[str, str], openid: str) -> dict[str, Any]:
    return await stack_login(session, stack, openid, client_id=es_app["clientId"], appid=es_app["appid"])


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    async with session.get(url, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body), resp.headers


class TestJwks:
    async def test_every_key_has_the_casdoor_fields(self, session, stack, es_app):
        """Each JWK has exactly Casdoor's members: kty, kid, alg, use "sig", x5c, and n, e (RSA, RS256) or crv, x,
        y (EC P-256, ES256); the kid of each application's token is listed."""
        tokens = [
            (await stack_login(session, stack, "o-jwks"))["access_token"],
            (await es_login(session, stack, es_app, "o-jwks-es"))["access_token"],
        ]
        doc, _ = await get_json(session, stack.gateway + "/.well-known/jwks")
        for key in doc["keys"]:
            assert set(key) == JWK_MEMBERS[key["kty"]]
            assert (key["kty"], key["alg"], key["use"]) in {("RSA", "RS256", "sig"), ("EC", "ES256", "sig")}
            assert key.get("crv", "P-256") == "P-256"
        by_kid = {key["kid"]: key["alg"] for key in doc["keys"]}
        assert [by_kid.get(kid_of(token)) for token in tokens] == ["RS256", "ES256"]

    async def test_x5c_certificate_holds_the_same_key(self, session, stack, es_app):
        """x5c[0] is a base64 DER X.509 certificate whose public key is the JWK's (n and e, or crv, x and y)."""
        doc, _ = await get_json(session, stack.gateway + "/.well-known/jwks")
        assert {key["kty"] for key in doc["keys"]} == {"RSA", "EC"}
        for key in doc["keys"]:
            cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
            from_cert = cert.public_key()
            if key["kty"] == "RSA":
                from_jwk: Any = RSAAlgorithm.from_jwk(key)
                assert isinstance(from_cert, rsa.RSAPublicKey) and isinstance(from_jwk, rsa.RSAPublicKey)
            else:
                from_jwk = ECAlgorithm.from_jwk(key)
                assert isinstance(from_cert, ec.EllipticCurvePublicKey) and isinstance(from_cert.curve, ec.SECP256R1)
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

    @pytest.mark.parametrize("alg", ["RS256", "ES256"])
    async def test_pyjwkclient_verifies_our_tokens(self, session, stack, es_app, alg):
        """PyJWT's PyJWKClient, used as its docs say, finds the key and verifies a real access token of either
        algorithm (and only with that algorithm allowed)."""
        if alg == "RS256":
            token, client_id = (await stack_login(session, stack, "o-pyjwk"))["access_token"], stack.demo["clientId"]
        else:
            token, client_id = (
                (await es_login(session, stack, es_app, "o-pyjwk-es"))["access_token"],
                es_app["clientId"],
            )

        def verify(algorithms: list[str]) -> dict[str, Any]:
            client = jwt.PyJWKClient(stack.gateway + "/.well-known/jwks")
            signing_key = client.get_signing_key_from_jwt(token)
            return dict(
                jwt.decode(token, signing_key.key, algorithms=algorithms, audience=client_id, issuer=stack.gateway)
            )

        claims = await asyncio.to_thread(verify, [alg])
        assert claims["tokenType"] == "access-token"
        assert jwt.get_unverified_header(token)["alg"] == alg
        other = "ES256" if alg == "RS256" else "RS256"
        with pytest.raises(jwt.InvalidAlgorithmError):
            await asyncio.to_thread(verify, [other])


class TestEs256Application:
    async def test_tokens_work_everywhere(self, session, stack, es_app, redis_url):
        """An ES256 application's login, refresh, introspection, account API and local verification
        (``shared.verifier``) all work with its ES256 tokens; the refreshed pair is ES256 too."""
        tokens = await es_login(session, stack, es_app, "o-es-everywhere")
        access = tokens["access_token"]
        assert jwt.get_unverified_header(access)["alg"] == "ES256"
        auth = basic(es_app["clientId"], es_app["clientSecret"])
        body = await introspect(session, stack, access, auth=auth)
        assert (body["active"], body["client_id"], body["token_use"]) == (True, es_app["clientId"], "access")
        assert (await account(session, stack, access))["owner"] == "demo"
        verifier = stack_verifier(session, stack, audience=es_app["clientId"])
        async with verifier:
            assert (await verifier.verify(access))["aud"] == [es_app["clientId"]]
        form = {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": es_app["clientId"],
        }
        async with session.post(stack.token_url, data=form) as resp:
            refreshed = await resp.json()
            assert resp.status == 200, refreshed
        assert jwt.get_unverified_header(refreshed["access_token"])["alg"] == "ES256"
        assert (await introspect(session, stack, refreshed["access_token"], auth=auth))["active"] is True
        assert (await introspect(session, stack, access, auth=auth)) == {"active": False}

    def test_certificate(self, stack, es_app):
        """The admin CLI's certificate of an ES256 application is Casdoor's shape for an ES256 cert: an X.509 of the
        EC P-256 key that signs its tokens, ``bitSize`` 256; the application's listing says ``tokenSigningMethod``."""
        cert = stack.admin("certificate", "--app", es_app["name"])
        assert (cert["cryptoAlgorithm"], cert["bitSize"], cert["type"]) == ("ES256", 256, "x509")
        public = x509.load_pem_x509_certificate(cert["certificate"].encode()).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
        listed = {app["name"]: app["tokenSigningMethod"] for app in stack.admin("list")["applications"]}
        assert (listed[es_app["name"]], listed[stack.demo["application"]]) == ("ES256", "RS256")


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
        assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
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
