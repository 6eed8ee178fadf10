"""``user_store.user_updates``: which fields update-user writes, who may write them, and what a valid value is."""

from __future__ import annotations

from typing import Any

import pytest

from shared.columns import camel
from shared.config import Secret, UserStoreConfig
from shared.errors import BadRequest, Forbidden
from user_store.user_rules import UserRules
from user_store.user_updates import FIELDS, parse_columns, plan_changes
from user_store.users import PasswordHashing, verify_password

STORED: dict[str, Any] = {
    "organization": "demo",
    "name": "alice",
    "display_name": "Alice",
    "avatar": "https://img.example/a.png",
    "email": "alice@example.com",
    "phone": "13800138000",
    "country_code": "CN",
    "password_hash": None,
    "type": "normal-user",
    "signup_application": "demo-app",
    "is_admin": False,
    "is_forbidden": False,
    "is_deleted": False,
    "properties": {"wechatOpenId": "o-1", "wechatUnionId": ""},
}
#: What get-account shows for STORED, as a client would send it back whole.
WHOLE = {
    "owner": "demo", "name": "alice", "id": "00000000-0000-0000-0000-000000000001", "displayName": "Alice",
    "avatar": "https://img.example/a.png", "email": "alice@example.com", "phone": "13800138000", "countryCode": "CN",
    "password": "", "type": "normal-user", "signupApplication": "demo-app", "isAdmin": False, "isForbidden": False,
    "isDeleted": False, "properties": {"wechatOpenId": "o-1", "wechatUnionId": ""}, "createdTime": "x",
    "updatedTime": "y", "wechat": "o-1", "firstName": "", "score": 0, "webauthnCredentials": None,
}  # fmt: skip


_defaults = UserStoreConfig(internal_token=Secret("x" * 16), database_url=Secret("postgresql://"))
RULES = UserRules.from_config(_defaults)


def plan(body: dict[str, Any], columns: str = "", *, admin: bool = False):
    return plan_changes(STORED, body, parse_columns(columns), admin=admin, rules=RULES)


class TestPartialUpdates:
    def test_only_fields_in_the_body_change(self):
        """Without columns, the fields present in the body are written, and only those that differ."""
        changes = plan({"displayName": "Alicia", "avatar": "https://img.example/a.png"})
        assert changes.values == {"display_name": "Alicia"}

    def test_whole_user_sent_back_by_a_normal_user(self):
        """A whole user (admin fields unchanged, unknown and read-only fields present) passes for a normal user."""
        changes = plan({**WHOLE, "displayName": "Alicia", "id": "something else", "updatedTime": "z"})
        assert changes.values == {"display_name": "Alicia"} and changes.password is None

    def test_stored_value_sent_back_passes_even_if_now_invalid(self):
        """A user with no display name yet may send its empty one back; only a change to empty is refused."""
        assert not plan_changes({**STORED, "display_name": ""}, {"displayName": ""}, None, admin=False, rules=RULES)

    def test_nothing_changed_is_falsy(self):
        """The same values again are no change ("Unaffected")."""
        assert not plan(WHOLE)

    def test_columns_limit_the_write(self):
        """With columns (snake_case or camelCase), other fields of the body are ignored, even admin ones."""
        body = {"displayName": "Alicia", "email": "new@example.com", "isAdmin": True}
        assert plan(body, "display_name").values == {"display_name": "Alicia"}
        assert plan(body, " displayName , email").values == {"display_name": "Alicia", "email": "new@example.com"}

    def test_column_absent_from_the_body_stays(self):
        """A column named but missing from the body is left as it is, as Casdoor does."""
        assert not plan({"displayName": "Alice"}, "avatar,displayName")

    def test_unknown_and_readonly_columns_are_refused(self):
        """Naming a field minidoor does not keep, or one nobody may change, is a clear 400."""
        with pytest.raises(BadRequest, match="not kept by minidoor"):
            parse_columns("display_name,first_name")
        with pytest.raises(BadRequest, match="id cannot be changed"):
            parse_columns("id")
        assert parse_columns(" , ") is None

    def test_camel(self):
        """snake_case column names map to Casdoor's camelCase; camelCase passes unchanged."""
        assert [camel(c) for c in ("display_name", "is_admin", "countryCode", "id")] == [
            "displayName", "isAdmin", "countryCode", "id",
        ]  # fmt: skip


class TestPermissions:
    @pytest.mark.parametrize(
        "body",
        [
            {"isAdmin": True},
            {"isForbidden": True},
            {"isDeleted": True},
            {"name": "bob"},
            {"type": "paid-user"},
            {"signupApplication": "other"},
            {"properties": {"vip": "1"}},
            {"owner": "acme"},
        ],
    )
    def test_admin_fields_need_an_admin(self, body):
        """A normal user changing an admin field gets 403 naming the field."""
        with pytest.raises(Forbidden, match=next(iter(body))):
            plan(body)

    def test_admin_may_change_admin_fields(self):
        """An admin (isAdmin user of the organization, or the application) writes admin fields."""
        changes = plan({"isAdmin": True, "name": "alice2", "properties": {"vip": "1"}}, admin=True)
        assert changes.values == {"is_admin": True, "name": "alice2", "properties": {"vip": "1"}}

    def test_nobody_moves_a_user_to_another_organization(self):
        """owner is compared, never written: even an admin gets 400."""
        with pytest.raises(BadRequest, match="another organization"):
            plan({"owner": "acme"}, admin=True)

    @pytest.mark.parametrize(
        "body", [{"displayName": "A"}, {"avatar": ""}, {"email": ""}, {"phone": "123456"}, {"countryCode": "US"}]
    )
    def test_self_service_fields(self, body):
        """A normal user changes its own self-service fields."""
        assert plan(body)


class TestValidation:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"displayName": ""}, "displayName cannot be empty"),
            ({"displayName": "   "}, "displayName cannot be empty"),
            ({"displayName": "x" * 101}, "at most 100"),
            ({"displayName": 5}, "displayName must be a string"),
            ({"displayName": "a\nb"}, "control characters"),
            ({"avatar": "ftp://x/a.png"}, "https URL"),
            ({"avatar": "https://"}, "https URL"),
            ({"email": "not-an-email"}, "email is invalid"),
            ({"phone": "+86 138"}, "digits only"),
            ({"countryCode": "china"}, "countryCode"),
            ({"password": "short"}, "6 to 128"),
            ({"password": "p" * 129}, "6 to 128"),
            ({"isAdmin": "yes"}, "true or false"),
            ({"name": "has space"}, "name is invalid"),
            ({"properties": {"a": 1}}, "properties"),
            ({"properties": []}, "properties"),
        ],
    )
    def test_invalid_values_are_400(self, body, message):
        """Each invalid value is refused with a message naming the field and the rule."""
        with pytest.raises(BadRequest, match=message):
            plan(body, admin=True)


class TestPasswords:
    def test_mask_and_empty_mean_unchanged(self):
        """The mask "***" (what get-account shows) and "" leave the password alone."""
        assert not plan({"password": "***"}) and not plan({"password": ""})

    def test_new_password_is_returned_for_hashing(self):
        """A new password is handed back in clear, never put in the column values."""
        changes = plan({"password": "correct horse"})
        assert changes.password == "correct horse" and "password_hash" not in changes.values

    async def test_argon2id_hash(self):
        """Passwords are stored as argon2id PHC strings that verify, never verbatim."""
        hashing = PasswordHashing(concurrency=1)
        try:
            hashed = await hashing.hash("correct horse")
        finally:
            hashing.close()
        assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
        assert verify_password(hashed, "correct horse")
        assert not verify_password(hashed, "wrong horse") and not verify_password("garbage", "x")


def test_every_writable_field_has_a_column():
    """The field table is consistent: writable fields name a users column."""
    for field in FIELDS.values():
        assert (field.access == "readonly") == (field.column == "")
