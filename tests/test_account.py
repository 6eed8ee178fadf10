"""Casdoor's account API through the gateway with real tokens: get-account, userinfo, get-user, get-users and
update-user, each authentication and permission rule, and the error envelope."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import pytest

from tests.account_helpers import account, api, app_params, bearer, new_user, other_org_app, update
from tests.oauth_helpers import basic, claims_of, kid_of, unsigned_token
from user_store.users import verify_password


async def make_admin(session, stack, user: dict[str, Any]) -> None:
    await update(session, stack, {"isAdmin": True}, id=f"demo/{user['name']}", **app_params(stack))


class TestAuthentication:
    async def test_no_credentials(self, session, stack):
        """Without a token or client credentials: 401, Casdoor's "Please login first", a Bearer challenge."""
        async with session.get(stack.gateway + "/api/get-account") as resp:
            body = await resp.json()
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="minidoor"'
        assert body == {
            "status": "error", "msg": "Please login first", "sub": "", "name": "", "data": None, "data2": None,
            "data3": None,
        }  # fmt: skip

    async def test_credentials_come_before_input(self, session, stack):
        """Without credentials, any account call is 401 before its input is judged (no 400 for a bad body)."""
        for method, path, kwargs in (
            ("POST", "/api/update-user", {"data": b"not json"}),
            ("GET", "/api/get-users", {"params": {"pageSize": "x"}}),
            ("GET", "/api/get-user", {}),
            ("POST", "/api/logout", {}),
            ("GET", "/api/userinfo", {}),
        ):
            body = await api(session, stack, method, path, status=401, **kwargs)
            assert body["msg"] == "Please login first"

    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
    async def test_bearer_header_any_case(self, session, stack, scheme):
        """The Authorization scheme is case-insensitive (Casdoor wants exactly "Bearer")."""
        user = await new_user(session, stack)
        body = await api(session, stack, "GET", "/api/get-account", headers=bearer(user["access_token"], scheme))
        assert body["data"]["name"] == user["name"]

    @pytest.mark.parametrize("param", ["access_token", "accessToken"])
    async def test_token_as_query_parameter(self, session, stack, param):
        """Casdoor's ``access_token`` / ``accessToken`` parameters carry the token too."""
        user = await new_user(session, stack)
        body = await api(session, stack, "GET", "/api/get-account", params={param: user["access_token"]})
        assert body["sub"] == user["id"]

    async def test_unverified_tokens_are_refused(self, session, stack):
        """A forged, unsigned, tampered or refresh token is 401 invalid_token: no claim is trusted unverified."""
        user = await new_user(session, stack)
        header, payload, signature = user["access_token"].split(".")
        claims = claims_of(user["access_token"])
        tampered = json.dumps({**claims, "sub": "00000000-0000-0000-0000-000000000000"}).encode()
        forged = f"{header}.{base64.urlsafe_b64encode(tampered).rstrip(b'=').decode()}.{signature}"
        for token in (forged, unsigned_token(claims, kid_of(user["access_token"])), user["refresh_token"], "garbage"):
            async with session.get(stack.gateway + "/api/get-account", headers=bearer(token)) as resp:
                body = await resp.json()
                assert resp.status == 401, body
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="minidoor", error="invalid_token"'
                assert body["status"] == "error" and "invalid" in body["msg"]

    async def test_client_credentials(self, session, stack):
        """Application credentials by query parameters or HTTP Basic; a wrong or half credential is 401."""
        await api(session, stack, "GET", "/api/get-users", params=app_params(stack))
        headers = basic(stack.demo["clientId"], stack.demo["clientSecret"])
        await api(session, stack, "GET", "/api/get-users", headers=headers)
        wrong = app_params(stack, clientSecret="0" * 40)
        body = await api(session, stack, "GET", "/api/get-users", status=401, params=wrong)
        assert "clientSecret" in body["msg"]
        await api(session, stack, "GET", "/api/get-users", status=401, params={"clientId": stack.demo["clientId"]})


class TestGetAccount:
    async def test_casdoor_shape(self, session, stack):
        """The envelope carries the user (camelCase, Casdoor's fields) and its organization; sub/name echo it."""
        user = await new_user(session, stack, username="shape", avatar="https://img.example/s.png")
        body = await api(session, stack, "GET", "/api/get-account", token=user["access_token"])
        data, org = body["data"], body["data2"]
        assert (body["sub"], body["name"], body["msg"], body["data3"]) == (data["id"], data["name"], "", None)
        assert data["id"] == user["id"] and data["owner"] == "demo"
        assert data["displayName"] == "shape" and data["avatar"] == "https://img.example/s.png"
        assert data["password"] == "" and data["type"] == "normal-user" and data["signupApplication"] == "demo-app"
        assert data["wechat"] == user["openid"]
        assert data["properties"] == {"wechatOpenId": user["openid"], "wechatUnionId": ""}
        assert data["isAdmin"] is False and data["isForbidden"] is False and data["isDeleted"] is False
        for key in ("email", "phone", "countryCode", "createdTime", "updatedTime"):
            assert isinstance(data[key], str)
        assert org["name"] == "demo" and org["owner"] == "admin" and org["displayName"] == "Demo organization"

    async def test_mints_no_token(self, session, stack, db):
        """Unlike Casdoor, reading the account stores and returns no new token."""
        user = await new_user(session, stack)
        before = await db.fetchval("SELECT count(*) FROM tokens WHERE user_id = $1::uuid", user["id"])
        for _ in range(3):
            data = await account(session, stack, user["access_token"])
            assert "accessToken" not in data
        assert await db.fetchval("SELECT count(*) FROM tokens WHERE user_id = $1::uuid", user["id"]) == before

    async def test_application_has_no_account(self, session, stack):
        """Client credentials name no user: get-account needs a user's token (401)."""
        body = await api(session, stack, "GET", "/api/get-account", status=401, params=app_params(stack))
        assert "access token" in body["msg"]


class TestUserinfo:
    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_oidc_claims(self, session, stack, method):
        """sub, iss, aud and the profile claims; email and phone appear once set. Raw JSON, no envelope."""
        user = await new_user(session, stack, username="claims", avatar="https://img.example/c.png")
        url = stack.gateway + "/api/userinfo"
        async with session.request(method, url, headers=bearer(user["access_token"])) as resp:
            info = await resp.json()
            assert resp.status == 200, info
        assert info == {
            "sub": user["id"], "iss": stack.gateway, "aud": stack.demo["clientId"],
            "preferred_username": user["name"], "name": "claims", "picture": "https://img.example/c.png",
        }  # fmt: skip
        email = f"{secrets.token_hex(4)}@example.com"
        await update(session, stack, {"email": email, "phone": "1390000" + str(secrets.randbelow(9999)).zfill(4)},
                     token=user["access_token"])  # fmt: skip
        async with session.request(method, url, headers=bearer(user["access_token"])) as resp:
            info = await resp.json()
        assert info["email"] == email and info["phone"].startswith("1390000")

    async def test_errors_use_the_envelope(self, session, stack):
        """As Casdoor: a refused userinfo answers the envelope."""
        await api(session, stack, "GET", "/api/userinfo", status=401)


class TestUpdateSelf:
    async def test_partial_update(self, session, stack):
        """Only the fields in the body change; sending the same values again is "Unaffected"."""
        user = await new_user(session, stack, username="partial")
        token = user["access_token"]
        change = {"displayName": "Partial Two", "avatar": "https://img.example/p2.png"}
        assert (await update(session, stack, change, token=token))["data"] == "Affected"
        data = await account(session, stack, token)
        assert (data["displayName"], data["avatar"], data["name"]) == ("Partial Two", change["avatar"], user["name"])
        assert (await update(session, stack, change, token=token))["data"] == "Unaffected"

    async def test_whole_user_round_trip(self, session, stack):
        """The account read, changed and sent back whole (what Casdoor clients do) updates the changed field."""
        user = await new_user(session, stack)
        data = await account(session, stack, user["access_token"])
        data["displayName"] = "Round Trip"
        assert (await update(session, stack, data, token=user["access_token"]))["data"] == "Affected"
        assert (await account(session, stack, user["access_token"]))["displayName"] == "Round Trip"

    async def test_password_is_hashed(self, session, stack, db):
        """A new password is stored as an argon2id hash and shown as "***"; sending "***" keeps it; the change
        holds no slot of the per-user cap once it is answered."""
        user = await new_user(session, stack)
        await update(session, stack, {"password": "s3cret-pass"}, token=user["access_token"])
        stored = await db.fetchval("SELECT password_hash FROM users WHERE id = $1::uuid", user["id"])
        assert stored.startswith("$argon2id$") and verify_password(stored, "s3cret-pass")
        data = await account(session, stack, user["access_token"])
        assert data["password"] == "***" and data["passwordType"] == "argon2id"
        assert (await update(session, stack, data, token=user["access_token"]))["data"] == "Unaffected"
        assert await db.fetchval("SELECT password_hash FROM users WHERE id = $1::uuid", user["id"]) == stored
        # The change's slot of the per-user cap (user_store/password_slots.py) was given back.
        assert await db.fetchval("SELECT count(*) FROM password_change_slots WHERE user_id = $1::uuid", user["id"]) == 0

    async def test_columns(self, session, stack):
        """``columns`` (snake_case or camelCase) limits the write; an unknown column is a clear 400."""
        user = await new_user(session, stack, username="cols")
        token = user["access_token"]
        body = {"displayName": "Cols Two", "avatar": "https://img.example/c2.png"}
        await update(session, stack, body, token=token, columns="display_name")
        data = await account(session, stack, token)
        assert (data["displayName"], data["avatar"]) == ("Cols Two", "")
        await update(session, stack, body, token=token, columns="avatar,displayName")
        assert (await account(session, stack, token))["avatar"] == body["avatar"]
        refused = await update(session, stack, body, status=400, token=token, columns="first_name")
        assert "first_name" not in refused["msg"] and "firstName" in refused["msg"]

    async def test_target_by_id_or_body(self, session, stack):
        """Self-update by ``?id=owner/name`` or by owner and name in the body, as Casdoor clients send."""
        user = await new_user(session, stack)
        token = user["access_token"]
        await update(session, stack, {"displayName": "By Id"}, token=token, id=f"demo/{user['name']}")
        await update(session, stack, {"owner": "demo", "name": user["name"], "displayName": "By Body"}, token=token)
        assert (await account(session, stack, token))["displayName"] == "By Body"

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"displayName": ""}, "displayName cannot be empty"),
            ({"email": "nope"}, "email is invalid"),
            ({"avatar": "javascript:alert(1)"}, "avatar must be an https URL"),
            ({"phone": "+86 138 0013 8000"}, "phone is invalid"),
            ({"password": "123"}, "password must be 6 to 128 characters"),
            ({"displayName": 42}, "displayName must be a string"),
        ],
    )
    async def test_invalid_input_is_400(self, session, stack, body, message):
        """Bad values are refused with 400 and a message naming the field."""
        user = await new_user(session, stack, username="valid")
        assert (await update(session, stack, body, status=400, token=user["access_token"]))["msg"].startswith(message)

    async def test_body_must_be_a_json_object(self, session, stack):
        """Any Content-Type is read as JSON (Casdoor's SDKs send none), but it must be a JSON object."""
        user = await new_user(session, stack)
        headers = bearer(user["access_token"])
        ok = json.dumps({"displayName": "No Type"}).encode()
        await api(session, stack, "POST", "/api/update-user", headers=headers, data=ok)
        for raw in (b"", b"not json", b"[1, 2]"):
            await api(session, stack, "POST", "/api/update-user", status=400, headers=headers, data=raw)

    async def test_email_and_phone_unique_in_the_organization(self, session, stack):
        """An email (any case) or phone another user of the organization has is 409."""
        first, second = await new_user(session, stack), await new_user(session, stack)
        email, phone = f"u{secrets.token_hex(4)}@example.com", "1380000" + str(secrets.randbelow(9999)).zfill(4)
        await update(session, stack, {"email": email, "phone": phone}, token=first["access_token"])
        clash = await update(session, stack, {"email": email.upper()}, status=409, token=second["access_token"])
        assert "email" in clash["msg"]
        clash = await update(session, stack, {"phone": phone}, status=409, token=second["access_token"])
        assert "phone" in clash["msg"]
        await update(session, stack, {"email": email}, token=first["access_token"])  # its own: no clash


class TestUpdatePermissions:
    @pytest.mark.parametrize(
        "body", [{"isAdmin": True}, {"name": "renamed"}, {"type": "paid-user"}, {"isForbidden": True}]
    )
    async def test_normal_user_cannot_change_admin_fields(self, session, stack, body):
        """A normal user changing an admin field of itself: 403 naming the field, nothing written."""
        user = await new_user(session, stack)
        refused = await update(session, stack, body, status=403, token=user["access_token"])
        assert next(iter(body)) in refused["msg"]
        data = await account(session, stack, user["access_token"])
        assert (data["isAdmin"], data["name"], data["type"]) == (False, user["name"], "normal-user")

    async def test_normal_user_cannot_update_others(self, session, stack):
        """Another user, existing or not, is 403 (not 404: a refusal tells nothing)."""
        user, other = await new_user(session, stack), await new_user(session, stack)
        for target in (f"demo/{other['name']}", "demo/no-such-user"):
            await update(session, stack, {"displayName": "x"}, status=403, token=user["access_token"], id=target)
        assert (await account(session, stack, other["access_token"]))["displayName"] == ""

    async def test_application_updates_admin_fields(self, session, stack):
        """The application's credentials change admin fields of its organization's users, rename included."""
        user = await new_user(session, stack)
        new_name = f"renamed-{secrets.token_hex(3)}"
        body = {"isAdmin": True, "type": "paid-user", "name": new_name, "properties": {"vip": "gold"}}
        await update(session, stack, body, id=f"demo/{user['name']}", **app_params(stack))
        data = (await api(session, stack, "GET", "/api/get-user", params=app_params(stack, id=f"demo/{new_name}")))[
            "data"
        ]
        assert (data["isAdmin"], data["type"], data["properties"]) == (True, "paid-user", {"vip": "gold"})
        other = await new_user(session, stack)
        taken = await update(session, stack, {"name": new_name}, status=409, id=f"demo/{other['name']}",
                             **app_params(stack))  # fmt: skip
        assert taken["msg"] == f"name {new_name!r} already exists in organization 'demo'"

    async def test_application_errors(self, session, stack):
        """Unknown user 404, no target 400, another organization's application 403, a move of organization 400."""
        await update(session, stack, {"displayName": "x"}, status=404, id="demo/no-such-user", **app_params(stack))
        await update(session, stack, {"displayName": "x"}, status=400, **app_params(stack))
        user = await new_user(session, stack)
        other = other_org_app(stack, f"org{secrets.token_hex(3)}")
        await update(session, stack, {"displayName": "x"}, status=403, id=f"demo/{user['name']}", **other)
        moved = await update(session, stack, {"owner": "elsewhere"}, status=400, id=f"demo/{user['name']}",
                             **app_params(stack))  # fmt: skip
        assert "another organization" in moved["msg"]

    async def test_organization_admin(self, session, stack):
        """An isAdmin user administers its organization's users: admin fields included."""
        admin, user = await new_user(session, stack), await new_user(session, stack)
        await make_admin(session, stack, admin)
        body = {"displayName": "Set By Admin", "type": "vip"}
        await update(session, stack, body, token=admin["access_token"], id=f"demo/{user['name']}")
        data = await account(session, stack, user["access_token"])
        assert (data["displayName"], data["type"]) == ("Set By Admin", "vip")

    async def test_forbidding_revokes_the_users_tokens(self, session, stack):
        """A user made forbidden (or deleted) loses its tokens at once, as in Casdoor."""
        user = await new_user(session, stack)
        await update(session, stack, {"isForbidden": True}, id=f"demo/{user['name']}", **app_params(stack))
        await api(session, stack, "GET", "/api/get-account", status=401, token=user["access_token"])
        await update(session, stack, {"isForbidden": False}, id=f"demo/{user['name']}", **app_params(stack))
        await api(session, stack, "GET", "/api/get-account", status=401, token=user["access_token"])


class TestGetUsers:
    async def test_get_user_lookups(self, session, stack):
        """The application reads a user by owner/name, or by owner with userId, email or phone."""
        user = await new_user(session, stack)
        email, phone = f"g{secrets.token_hex(4)}@example.com", "1370000" + str(secrets.randbelow(9999)).zfill(4)
        await update(session, stack, {"email": email, "phone": phone}, token=user["access_token"])
        for params in ({"id": f"demo/{user['name']}"}, {"owner": "demo", "userId": user["id"]},
                       {"owner": "demo", "email": email.upper()}, {"owner": "demo", "phone": phone}):  # fmt: skip
            body = await api(session, stack, "GET", "/api/get-user", params=app_params(stack, **params))
            assert body["data"]["id"] == user["id"], params
        await api(session, stack, "GET", "/api/get-user", status=400, params=app_params(stack, owner="demo"))
        # A NUL byte cannot be stored or compared by PostgreSQL: a clear 400, not a 500.
        await api(session, stack, "GET", "/api/get-user", status=400, params=app_params(stack, id="demo/a\x00b"))

    async def test_get_user_permissions(self, session, stack):
        """Unknown user 404 for the application; a user reads itself, not others (403); another org's app 403."""
        user, other = await new_user(session, stack), await new_user(session, stack)
        await api(session, stack, "GET", "/api/get-user", status=404, params=app_params(stack, id="demo/nobody"))
        own = await api(session, stack, "GET", "/api/get-user", token=user["access_token"],
                        params={"id": f"demo/{user['name']}"})  # fmt: skip
        assert own["data"]["name"] == user["name"]
        for target in (other["name"], "nobody"):
            await api(session, stack, "GET", "/api/get-user", status=403, token=user["access_token"],
                      params={"id": f"demo/{target}"})  # fmt: skip
        foreign = other_org_app(stack, f"org{secrets.token_hex(3)}")
        await api(session, stack, "GET", "/api/get-user", status=403, params={"id": f"demo/{user['name']}", **foreign})

    async def test_get_users(self, session, stack):
        """The application and organization admins list users (a page with the total in data2); others 403."""
        user, admin = await new_user(session, stack), await new_user(session, stack)
        body = await api(session, stack, "GET", "/api/get-users", params=app_params(stack, owner="demo"))
        names = [u["name"] for u in body["data"]]
        assert user["name"] in names and body["data2"] is None
        page = await api(session, stack, "GET", "/api/get-users", params=app_params(stack, p="1", pageSize="1"))
        assert len(page["data"]) == 1 and page["data2"] == len(names)
        await api(session, stack, "GET", "/api/get-users", status=403, token=user["access_token"])
        await make_admin(session, stack, admin)
        await api(session, stack, "GET", "/api/get-users", token=admin["access_token"])
        await api(session, stack, "GET", "/api/get-users", status=403, params=app_params(stack, owner="acme"))
        await api(session, stack, "GET", "/api/get-users", status=400, params=app_params(stack, pageSize="-1"))


class TestEnvelopeChoice:
    async def test_account_routes_answer_the_envelope(self, session, stack):
        """An account route's errors use Casdoor's envelope, a wrong method included; unknown paths do not."""
        await api(session, stack, "DELETE", "/api/get-account", status=405)
        async with session.get(stack.gateway + "/api/get-organization") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"

    async def test_oauth_endpoints_keep_oauth_errors(self, session, stack):
        """The token endpoints answer ``{error, error_description}``."""
        url = stack.gateway + "/api/login/oauth/refresh_token"
        async with session.post(url, data={"grant_type": "password", "client_id": stack.demo["clientId"]}) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "error": "unsupported_grant_type",
                "error_description": "grant_type should be refresh_token",
            }
