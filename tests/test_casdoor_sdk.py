"""The official ``casdoor`` Python SDK (PyPI, pinned in ``tests/sdk/requirements.lock``) against a running stack,
configured as a developer would: endpoint, client id and secret, the certificate from ``demo.json``. Every test runs
for an RS256 application and for an ES256 one (the SDK verifies ``RS256, RS512, ES256, ES384, ES512``).

The SDK pins older aiohttp/cryptography/PyJWT than minidoor, so it lives in its own venv (``make sdk-venv``) and
runs as the external client it is: ``tests/sdk/driver.py`` under ``.venv-sdk/bin/python``, printing JSON.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.account_helpers import account
from tests.oauth_helpers import claims_of, kid_of, make_app, stack_login
from tests.stack import ROOT, Stack

SDK_PYTHON = ROOT / ".venv-sdk" / "bin" / "python"
DRIVER = Path(__file__).resolve().parent / "sdk" / "driver.py"


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    """The SDK's interpreter, set up by ``make sdk-venv`` (what ``make test`` runs first) when missing."""
    probe = [str(SDK_PYTHON), "-c", "import casdoor"]
    if not SDK_PYTHON.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        out = subprocess.run(["make", "sdk-venv"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            pytest.fail(f"`make sdk-venv` failed; the SDK tests need it:\n{out.stdout}\n{out.stderr}")
    return SDK_PYTHON


def sdk(python: Path, stack: Stack, ops: list[list[Any]], **config: str) -> list[dict[str, Any]]:
    """Run ``ops`` through one CasdoorSDK configured for the demo application (``config`` overrides)."""
    settings = {
        "endpoint": stack.gateway,
        "client_id": stack.demo["clientId"],
        "client_secret": stack.demo["clientSecret"],
        "certificate": stack.demo["certificate"],
        "org_name": stack.demo["organization"],
        "application_name": stack.demo["application"],
        **config,
    }
    request = json.dumps({"sdk": settings, "ops": ops})
    out = subprocess.run([str(python), str(DRIVER)], input=request, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def sdk_stack(request: pytest.FixtureRequest) -> Stack:
    """Every test twice: against a stack whose demo application signs RS256 (the default), then one whose demo
    application, like every application it creates, signs ES256 (``DEFAULT_SIGNING_ALG=ES256``)."""
    stack: Stack = request.getfixturevalue("stack" if request.param == "RS256" else "es256_stack")
    assert stack.demo["signingAlg"] == request.param
    return stack


def alg_of(stack: Stack) -> str:
    """What the stack's demo application (and each application it creates) signs with."""
    return str(stack.demo["signingAlg"])


def value(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["value"]


async def new_user(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    token = await stack_login(session, stack, f"o-{secrets.token_hex(6)}", username=f"sdk{secrets.token_hex(3)}")
    return {**token, "name": claims_of(token["access_token"])["name"]}


class TestCertificate:
    def test_demo_json_and_cli_carry_the_signing_certificate(self, sdk_stack):
        """demo.json's ``certificate`` is the PEM the admin CLI prints for the application: the X.509 of the key
        that signs (its ``name`` is the JWT ``kid``), RSA 2048 for RS256 and EC P-256 for ES256."""
        pem = sdk_stack.demo["certificate"]
        cert = x509.load_pem_x509_certificate(pem.encode())
        shown = sdk_stack.admin("certificate", "--app", sdk_stack.demo["application"])
        assert shown["certificate"] == pem and shown["clientId"] == sdk_stack.demo["clientId"]
        bits, key_type = {"RS256": (2048, rsa.RSAPublicKey), "ES256": (256, ec.EllipticCurvePublicKey)}[
            alg_of(sdk_stack)
        ]
        assert (shown["type"], shown["cryptoAlgorithm"], shown["bitSize"]) == ("x509", alg_of(sdk_stack), bits)
        assert isinstance(cert.public_key(), key_type)
        assert cert.subject.rfc4514_string() == f"CN={shown['name']},O=minidoor"
        raw = subprocess.run(
            [sys.executable, "-m", "services", "admin", "certificate", "--app", sdk_stack.demo["application"], "--pem"],
            cwd=ROOT, env=sdk_stack.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert raw.returncode == 0 and raw.stdout == pem

    def test_unknown_application(self, sdk_stack):
        """The CLI names an unknown application and exits 1."""
        with pytest.raises(RuntimeError, match="application 'nope' does not exist"):
            sdk_stack.admin("certificate", "--app", "nope")


class TestParseJwtToken:
    async def test_sdk_verifies_minidoor_tokens(self, session, sdk_stack, sdk_python):
        """``parse_jwt_token`` (the certificate's key, audience = clientId) accepts a minidoor access token of the
        application's algorithm; the certificate names the token's kid."""
        user = await new_user(session, sdk_stack)
        assert jwt.get_unverified_header(user["access_token"])["alg"] == alg_of(sdk_stack)
        [claims] = sdk(sdk_python, sdk_stack, [["parse_jwt_token", user["access_token"]]])
        claims = value(claims)
        assert claims["aud"] == [sdk_stack.demo["clientId"]] and claims["name"] == user["name"]
        assert kid_of(user["access_token"]) == sdk_stack.admin("certificate", "--app", "demo-app")["name"]

    async def test_sdk_refuses_foreign_and_tampered_tokens(self, session, sdk_stack, sdk_python):
        """Another application's token fails the audience check; a tampered one fails the signature."""
        other = make_app(sdk_stack, f"sdk-other-{secrets.token_hex(2)}")
        foreign = await stack_login(
            session, sdk_stack, "o-sdk-foreign", client_id=other["clientId"], appid=other["appid"]
        )
        user = await new_user(session, sdk_stack)
        header, payload, signature = user["access_token"].split(".")
        tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
        results = sdk(
            sdk_python, sdk_stack, [["parse_jwt_token", foreign["access_token"]], ["parse_jwt_token", tampered]]
        )
        assert not results[0]["ok"] and "audience" in results[0]["error"].lower()
        assert not results[1]["ok"] and "signature" in results[1]["error"].lower()


class TestUsers:
    async def test_get_user_and_get_users(self, session, sdk_stack, sdk_python):
        """``get_user`` and ``get_users`` read minidoor users into the SDK's User objects."""
        user = await new_user(session, sdk_stack)
        got, listed, missing = sdk(
            sdk_python, sdk_stack, [["get_user", user["name"]], ["get_users"], ["get_user", "nope"]]
        )
        got = value(got)
        assert got["name"] == user["name"] and got["owner"] == "demo" and got["displayName"].startswith("sdk")
        assert got["id"] == claims_of(user["access_token"])["sub"] and got["password"] == ""
        assert user["name"] in [u["name"] for u in value(listed)]
        assert not missing["ok"] and "does not exist" in missing["error"]

    async def test_update_user(self, session, sdk_stack, sdk_python):
        """``update_user`` (the whole user, no Content-Type) and ``update_user_for_columns`` write through."""
        user = await new_user(session, sdk_stack)
        whole, columns = sdk(
            sdk_python,
            sdk_stack,
            [
                ["update_user", user["name"], {"displayName": "From SDK", "email": "sdk@example.com"}],
                ["update_user_for_columns", user["name"], {"avatar": "https://img.example/sdk.png", "phone": "1"},
                 ["avatar"]],
            ],
        )  # fmt: skip
        assert value(whole)["data"] == "Affected" and value(columns)["data"] == "Affected"
        data = await account(session, sdk_stack, user["access_token"])
        assert (data["displayName"], data["email"]) == ("From SDK", "sdk@example.com")
        assert (data["avatar"], data["phone"]) == ("https://img.example/sdk.png", "")

    async def test_user_token_and_errors(self, session, sdk_stack, sdk_python):
        """``with_access_token(...).get_account()`` reads the bearer's user; wrong credentials raise the server's
        message; ``refresh_oauth_tokens`` rotates the pair."""
        user = await new_user(session, sdk_stack)
        got, refreshed = sdk(
            sdk_python,
            sdk_stack,
            [["get_account", user["access_token"]], ["refresh_oauth_tokens", user["refresh_token"]]],
        )
        assert value(got)["name"] == user["name"]
        assert value(refreshed)["refresh_token"] != user["refresh_token"]
        access = value(refreshed)["access_token"]
        assert jwt.get_unverified_header(access)["alg"] == alg_of(sdk_stack)
        [claims] = sdk(sdk_python, sdk_stack, [["parse_jwt_token", access]])
        assert value(claims)["sub"] == claims_of(user["access_token"])["sub"]
        [denied] = sdk(sdk_python, sdk_stack, [["get_user", user["name"]]], client_secret="0" * 40)
        assert not denied["ok"] and "clientSecret" in denied["error"]
