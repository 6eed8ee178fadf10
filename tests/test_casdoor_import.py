"""``make import-casdoor``: a fixture written from Casdoor's documented ``init_data.json`` format, imported by the
admin CLI, then a mini-program login and the official Casdoor SDK against the imported application, configured as
it was for Casdoor (same clientId, clientSecret and, with WITH_CERTS, certificate)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests import test_casdoor_sdk
from tests.oauth_helpers import claims_of, eventually, jwks_kids, kid_of, stack_login
from tests.stack import Stack
from tests.test_casdoor_sdk import sdk, value
from user_store.signing_keys.material import new_private_key, private_key_pem, self_signed_certificate

#: Each test runs the admin CLI a few times, a process each (slow on a loaded machine).
pytestmark = pytest.mark.timeout(300)
#: The Casdoor SDK's interpreter, the fixture of the SDK tests.
sdk_python = test_casdoor_sdk.sdk_python
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "casdoor_init_data.json"
ALICE_ID = "6f2e1c9a-3b4d-4e5f-8a7b-9c0d1e2f3a4b"


def fixture() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text()))


def app_of(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["applications"][0])


def import_file(stack: Stack, doc: dict[str, Any], tmp_path: Path, *flags: str) -> dict[str, Any]:
    path = tmp_path / "init_data.json"
    path.write_text(json.dumps(doc))
    report: dict[str, Any] = stack.admin("import-casdoor", "--file", str(path), *flags)
    return report


def named(entries: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(entry["kind"], entry["name"]) for entry in entries}


async def register_with_sandbox(session: aiohttp.ClientSession, stack: Stack, doc: dict[str, Any]) -> str:
    provider = doc["providers"][0]
    body = {"appid": provider["clientId"], "secret": provider["clientSecret"]}
    async with session.post(stack.sandbox + "/sandbox/apps", json=body) as resp:
        assert resp.status == 200
    return str(provider["clientId"])


class TestImport:
    def test_dry_run_then_import_then_nothing_changes(self, stack, tmp_path):
        """A dry run reports and writes nothing; the import creates the organization, the application, its
        mini-program provider and the users, and says why it skipped the rest; a second run creates nothing."""
        doc = fixture()
        dry = import_file(stack, doc, tmp_path, "--dry-run")
        assert dry["dryRun"] is True
        assert "cd-org" not in {org["name"] for org in stack.admin("list")["organizations"]}

        report = import_file(stack, doc, tmp_path)
        assert named(report["created"]) == named(dry["created"]) == {
            ("organization", "cd-org"), ("application", "cd-app"), ("provider", "provider_wechat_mp"),
            ("user", "cd-org/wx-alice"), ("user", "cd-org/admin-bob"),
        }  # fmt: skip
        reasons = {(entry["kind"], entry["name"]): entry["reason"] for entry in report["skipped"]}
        assert set(reasons) == {
            ("provider", "provider_github"), ("application", "cd-app-broken"), ("user", "cd-org/no-id"),
            ("user", "elsewhere/stranger"), ("password", "cd-org/admin-bob"), ("cert", "cert-cd"),
        }  # fmt: skip
        assert "WeChatMiniProgram" in reasons[("provider", "provider_github")]
        assert "WITH_CERTS" in reasons[("cert", "cert-cd")]
        print("import report:", json.dumps(report["counts"], sort_keys=True))

        [app] = [a for a in stack.admin("list")["applications"] if a["name"] == "cd-app"]
        assert app["clientId"] == app_of(doc)["clientId"] and app["providers"] == ["provider_wechat_mp"]
        assert (app["expireInHours"], app["refreshExpireInHours"]) == (72, 168)

        again = import_file(stack, doc, tmp_path)
        assert again["created"] == [] and named(again["unchanged"]) == named(report["created"])

    async def test_login_and_sdk_against_the_imported_application(self, session, stack, tmp_path, sdk_python):
        """The imported WeChat user logs in through the mini program's unchanged call (same clientId) and is the
        same user (Casdoor's id, name and profile); the SDK with the application's Casdoor credentials reads it."""
        doc = fixture()
        import_file(stack, doc, tmp_path)
        appid = await register_with_sandbox(session, stack, doc)
        app = app_of(doc)
        token = await stack_login(session, stack, "o-casdoor-alice", client_id=app["clientId"], appid=appid)
        claims = claims_of(token["access_token"])
        assert (claims["sub"], claims["name"], claims["aud"]) == (ALICE_ID, "wx-alice", [app["clientId"]])

        config = {"client_id": app["clientId"], "client_secret": app["clientSecret"], "org_name": "cd-org",
                  "application_name": "cd-app"}  # fmt: skip
        got, listed = sdk(sdk_python, stack, [["get_user", "wx-alice"], ["get_users"]], **config)
        user = value(got)
        assert (user["id"], user["displayName"], user["email"], user["phone"]) == (
            ALICE_ID, "Alice", "alice@example.com", "13800000001",
        )  # fmt: skip
        assert {u["name"] for u in value(listed)} == {"wx-alice", "admin-bob"}


class TestImportWithCerts:
    async def test_casdoor_tokens_and_certificate_keep_working(self, session, stack, tmp_path, sdk_python):
        """With WITH_CERTS the application's cert becomes the signing key (its kid the cert's name): a token
        Casdoor signed before the move verifies with the JWKS, and the SDK configured with Casdoor's certificate
        verifies minidoor's new tokens too. A second run leaves the cert alone."""
        key = new_private_key("RS256")
        certificate = self_signed_certificate(key, "cert-cd")
        doc = fixture()
        doc["certs"][0].update(certificate=certificate, privateKey=private_key_pem(key).decode())
        report = import_file(stack, doc, tmp_path, "--with-certs")
        assert ("cert", "cert-cd") in named(report["created"])
        assert ("cert", "cert-cd") in named(import_file(stack, doc, tmp_path, "--with-certs")["unchanged"])
        await eventually(_has_kid(stack, "cert-cd"), 10.0, "the imported cert in the JWKS")

        now = int(time.time())
        app = app_of(doc)
        casdoor_claims = {
            "iss": "https://casdoor.example.com", "sub": ALICE_ID, "aud": [app["clientId"]], "name": "wx-alice",
            "owner": "cd-org", "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        }  # fmt: skip
        casdoor_token = jwt.encode(casdoor_claims, key, algorithm="RS256", headers={"kid": "cert-cd"})
        client = jwt.PyJWKClient(stack.gateway + "/.well-known/jwks")
        signing_key = client.get_signing_key_from_jwt(casdoor_token)
        decoded = jwt.decode(casdoor_token, signing_key.key, algorithms=["RS256"], audience=app["clientId"])
        assert decoded["sub"] == ALICE_ID

        appid = await register_with_sandbox(session, stack, doc)

        async def signs_with_the_cert() -> bool:
            token = await stack_login(session, stack, "o-casdoor-alice", client_id=app["clientId"], appid=appid)
            holder["token"] = token["access_token"]
            return kid_of(token["access_token"]) == "cert-cd"

        holder: dict[str, str] = {}
        await eventually(signs_with_the_cert, 15.0, "tokens signed with the imported cert", interval=0.5)
        config = {"client_id": app["clientId"], "client_secret": app["clientSecret"], "org_name": "cd-org",
                  "application_name": "cd-app", "certificate": certificate}  # fmt: skip
        ours, theirs = sdk(
            sdk_python, stack, [["parse_jwt_token", holder["token"]], ["parse_jwt_token", casdoor_token]], **config
        )
        assert value(ours)["sub"] == ALICE_ID and value(theirs)["sub"] == ALICE_ID


def _has_kid(stack: Stack, kid: str) -> Any:
    async def check() -> bool:
        return kid in jwks_kids(stack)

    return check
