"""The official ``casdoor`` Python SDK (PyPI, pinned in ``tests/sdk/requirements.lock``) against a running stack,
configured as a developer would: endpoint, client id and secret, the certificate from ``demo.json``.

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
import pytest
from cryptography import x509

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


def value(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["value"]


async def new_user(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    token = await stack_login(session, stack, f"o-{secrets.token_hex(6)}", username=f"sdk{secrets.token_hex(3)}")
    return {**token, "name": claims_of(token["access_token"])["name"]}


class TestCertificate:
    def test_demo_json_and_cli_carry_the_signing_certificate(self, stack):
        """demo.json's ``certificate`` is the PEM the admin CLI prints for the application: the X.509 of the key
        that signs (its ``name`` is the JWT ``kid``)."""
        pem = stack.demo["certificate"]
        cert = x509.load_pem_x509_certificate(pem.encode())
        shown = stack.admin("certificate", "--app", stack.demo["application"])
        assert shown["certificate"] == pem and shown["clientId"] == stack.demo["clientId"]
        assert shown["type"] == "x509" and shown["cryptoAlgorithm"] == "RS256" and shown["bitSize"] == 2048
        assert cert.subject.rfc4514_string() == f"CN={shown['name']},O=minidoor"
        raw = subprocess.run(
            [sys.executable, "-m", "services", "admin", "certificate", "--app", stack.demo["application"], "--pem"],
            cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert raw.returncode == 0 and raw.stdout == pem

    def test_unknown_application(self, stack):
        """The CLI names an unknown application and exits 1."""
        with pytest.raises(RuntimeError, match="application 'nope' does not exist"):
            stack.admin("certificate", "--app", "nope")


class TestParseJwtToken:
    async def test_sdk_verifies_minidoor_tokens(self, session, stack, sdk_python):
        """``parse_jwt_token`` (RS256, the certificate's key, audience = clientId) accepts a minidoor access token;
        the certificate names the token's kid."""
        user = await new_user(session, stack)
        [claims] = sdk(sdk_python, stack, [["parse_jwt_token", user["access_token"]]])
        claims = value(claims)
        assert claims["aud"] == [stack.demo["clientId"]] and claims["name"] == user["name"]
        assert kid_of(user["access_token"]) == stack.admin("certificate", "--app", "demo-app")["name"]

    async def test_sdk_refuses_foreign_and_tampered_tokens(self, session, stack, sdk_python):
        """Another application's token fails the audience check; a tampered one fails the signature."""
        other = make_app(stack, f"sdk-other-{secrets.token_hex(2)}")
        foreign = await stack_login(session, stack, "o-sdk-foreign", client_id=other["clientId"], appid=other["appid"])
        user = await new_user(session, stack)
        header, payload, signature = user["access_token"].split(".")
        tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
        results = sdk(sdk_python, stack, [["parse_jwt_token", foreign["access_token"]], ["parse_jwt_token", tampered]])
        assert not results[0]["ok"] and "audience" in results[0]["error"].lower()
        assert not results[1]["ok"] and "signature" in results[1]["error"].lower()


class TestUsers:
    async def test_get_user_and_get_users(self, session, stack, sdk_python):
        """``get_user`` and ``get_users`` read minidoor users into the SDK's User objects."""
        user = await new_user(session, stack)
        got, listed, missing = sdk(sdk_python, stack, [["get_user", user["name"]], ["get_users"], ["get_user", "nope"]])
        got = value(got)
        assert got["name"] == user["name"] and got["owner"] == "demo" and got["displayName"].startswith("sdk")
        assert got["id"] == claims_of(user["access_token"])["sub"] and got["password"] == ""
        assert user["name"] in [u["name"] for u in value(listed)]
        assert not missing["ok"] and "does not exist" in missing["error"]

    async def test_update_user(self, session, stack, sdk_python):
        """``update_user`` (the whole user, no Content-Type) and ``update_user_for_columns`` write through."""
        user = await new_user(session, stack)
        whole, columns = sdk(
            sdk_python,
            stack,
            [
                ["update_user", user["name"], {"displayName": "From SDK", "email": "sdk@example.com"}],
                ["update_user_for_columns", user["name"], {"avatar": "https://img.example/sdk.png", "phone": "1"},
                 ["avatar"]],
            ],
        )  # fmt: skip
        assert value(whole)["data"] == "Affected" and value(columns)["data"] == "Affected"
        data = await account(session, stack, user["access_token"])
        assert (data["displayName"], data["email"]) == ("From SDK", "sdk@example.com")
        assert (data["avatar"], data["phone"]) == ("https://img.example/sdk.png", "")

    async def test_user_token_and_errors(self, session, stack, sdk_python):
        """``with_access_token(...).get_account()`` reads the bearer's user; wrong credentials raise the server's
        message; ``refresh_oauth_tokens`` rotates the pair."""
        user = await new_user(session, stack)
        got, refreshed = sdk(
            sdk_python, stack, [["get_account", user["access_token"]], ["refresh_oauth_tokens", user["refresh_token"]]]
        )
        assert value(got)["name"] == user["name"]
        assert value(refreshed)["refresh_token"] != user["refresh_token"]
        [denied] = sdk(sdk_python, stack, [["get_user", user["name"]]], client_secret="0" * 40)
        assert not denied["ok"] and "clientSecret" in denied["error"]
