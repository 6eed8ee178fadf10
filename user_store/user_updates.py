"""What ``/api/update-user`` may change, who may change it, and what a valid value is: pure rules, no I/O.

A body is a Casdoor user object, whole (what the SDKs send back after ``get-user``) or partial (what mini programs
send). The fields written are those named in ``columns`` (camelCase or snake_case), else every field of the body;
fields minidoor does not keep are ignored in a body and refused when named in ``columns``. A field whose value
equals the stored one is no change, so a whole user sent back by a normal user passes as long as it only changes
self-service fields. ``password`` is ``"***"`` (or ``""``) for "unchanged"; a new one is hashed by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.columns import camel
from shared.errors import BadRequest, Forbidden
from user_store.user_rules import UserRules
from user_store.users import MASK

#: Who may change a field: the user itself (and admins), admins only (an ``isAdmin`` user of the organization or
#: the application's credentials), or nobody (computed or fixed; ignored in a body).
Access = Literal["self", "admin", "readonly"]

MIN_PASSWORD = 6
#: argon2 hashes any length, but a bounded input keeps a request's cost bounded.
MAX_PASSWORD = 128
MAX_TEXT = 100
MAX_PROPERTIES = 100
MAX_PROPERTY_VALUE = 1000
_PHONE = re.compile(r"^[0-9]{4,20}$")
_COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")

Parse = Callable[[str, object, UserRules], Any]


@dataclass(frozen=True, slots=True)
class Field:
    #: Casdoor's camelCase name.
    name: str
    access: Access
    #: The users column; empty for read-only fields.
    column: str = ""
    parse: Parse | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    #: Column -> new value, only what differs from the stored user.
    values: dict[str, Any] = field(default_factory=dict)
    #: A new password in clear, to hash before writing ``password_hash``.
    password: str | None = None

    def __bool__(self) -> bool:
        return bool(self.values) or self.password is not None


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest("{name} must be a string", name=name)
    if any(not ch.isprintable() for ch in value):
        raise BadRequest("{name} must not contain control characters", name=name)
    return value


def _bounded(max_len: int, *, required: bool = False, pattern: re.Pattern[str] | None = None, hint: str = "") -> Parse:
    def parse(name: str, value: object, rules: UserRules) -> str:
        text = _text(name, value)
        if required and not text.strip():
            raise BadRequest("{name} cannot be empty", name=name)
        if len(text) > max_len:
            raise BadRequest("{name} must be at most {max_len} characters", name=name, max_len=max_len)
        if text and pattern is not None and not pattern.match(text):
            raise BadRequest("{name} is invalid: {hint}", name=name, hint=hint)
        return text

    return parse


def _avatar(name: str, value: object, rules: UserRules) -> str:
    return rules.avatar(name, _text(name, value))


def _email(name: str, value: object, rules: UserRules) -> str:
    return rules.email(name, _text(name, value))


def _display_name(name: str, value: object, rules: UserRules) -> str:
    return rules.display_name(name, _text(name, value), required=True)


def _user_name(name: str, value: object, rules: UserRules) -> str:
    return rules.user_name(name, _text(name, value))


def _flag(name: str, value: object, rules: UserRules) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("{name} must be true or false", name=name)
    return value


def _properties(name: str, value: object, rules: UserRules) -> dict[str, str]:
    if not isinstance(value, dict):
        raise BadRequest("{name} must be an object of strings", name=name)
    if len(value) > MAX_PROPERTIES:
        raise BadRequest("{name} has more than {max_properties} entries", name=name, max_properties=MAX_PROPERTIES)
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > MAX_TEXT or len(item) > MAX_PROPERTY_VALUE:
            raise BadRequest(
                "{name} must map names of at most {max_text} characters to strings", name=name, max_text=MAX_TEXT
            )
    return dict(value)


def _password(name: str, value: object, rules: UserRules | None = None) -> str:
    text = _text(name, value)
    if not MIN_PASSWORD <= len(text) <= MAX_PASSWORD:
        raise BadRequest(
            "{name} must be {min_password} to {max_password} characters",
            name=name,
            min_password=MIN_PASSWORD,
            max_password=MAX_PASSWORD,
        )
    return text


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("displayName", "self", "display_name", _display_name),
        Field("avatar", "self", "avatar", _avatar),
        Field("email", "self", "email", _email),
        Field("phone", "self", "phone", _bounded(20, pattern=_PHONE, hint="digits only; the region is countryCode")),
        Field("countryCode", "self", "country_code", _bounded(2, pattern=_COUNTRY_CODE, hint="two capitals, e.g. CN")),
        Field("password", "self", "password_hash", _password),
        Field("name", "admin", "name", _user_name),
        Field("owner", "admin", "organization"),
        Field("type", "admin", "type", _bounded(MAX_TEXT, required=True)),
        Field("signupApplication", "admin", "signup_application", _bounded(MAX_TEXT)),
        Field("isAdmin", "admin", "is_admin", _flag),
        Field("isForbidden", "admin", "is_forbidden", _flag),
        Field("isDeleted", "admin", "is_deleted", _flag),
        Field("properties", "admin", "properties", _properties),
        *(
            Field(name, "readonly")
            for name in (
                "id",
                "createdTime",
                "updatedTime",
                "wechat",
                "passwordType",
                "permanentAvatar",
                "emailVerified",
            )  # fmt: skip
        ),
    )
}


def parse_columns(columns: str) -> list[str] | None:
    """The fields ``columns`` names (None when it is empty); ``BadRequest`` for one minidoor does not keep."""
    names = [camel(item.strip()) for item in columns.split(",") if item.strip()]
    if not names:
        return None
    for name in names:
        found = FIELDS.get(name)
        if found is None:
            writable = ", ".join(f.name for f in FIELDS.values() if f.access != "readonly")
            raise BadRequest(
                "column {name!r} is not kept by minidoor; writable columns: {writable}", name=name, writable=writable
            )
        if found.access == "readonly":
            raise BadRequest("{name} cannot be changed", name=name)
    return names


def plan_changes(
    stored: Mapping[str, Any], body: Mapping[str, Any], columns: list[str] | None, *, admin: bool, rules: UserRules
) -> Changes:
    """What to write to ``stored`` (a users row with ``organization``) for this body.

    ``BadRequest`` for an invalid value, ``Forbidden`` when a non-admin changes an admin field. A field named in
    ``columns`` but absent from the body stays as it is, as in Casdoor.
    """
    names = columns if columns is not None else [name for name in body if name in FIELDS]
    values: dict[str, Any] = {}
    password: str | None = None
    for name in names:
        if name not in body:
            continue
        spec = FIELDS[name]
        value = body[name]
        if spec.access == "readonly":
            continue
        if spec.name == "password":
            if value in ("", MASK):
                continue
            password = _password(name, value)
            continue
        if value == stored[spec.column]:
            continue  # what was read, sent back: even a value the rules now refuse (an empty displayName)
        parsed = _text(name, value) if spec.parse is None else spec.parse(name, value, rules)
        if parsed == stored[spec.column]:
            continue
        if spec.access == "admin" and not admin:
            raise Forbidden("only an administrator or the application's credentials can change {name}", name=name)
        if spec.parse is None:
            raise BadRequest("a user cannot move to another organization")
        values[spec.column] = parsed
    return Changes(values, password)
