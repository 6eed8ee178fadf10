"""What a valid user name, display name, email and avatar is, for sign-up (the mini-program login) and for
update-user alike: one set of rules, built once from config (``UserRules.from_config``).

- Names and display names are NFKC-normalized (full-width letters become ASCII), and both have one length cap.
- Reserved names (``admin``, ``root``, ...) and their look-alikes are refused: two strings look alike when their
  skeletons match (after Unicode UTS #39: NFKC, case folding, every confusable character replaced by its
  prototype), so ``аdmin`` with a Cyrillic ``а``, ``ＡＤＭＩＮ`` and ``adm1n`` all count as ``admin``.
- Emails are checked by ``email-validator`` (syntax only, no DNS: a sign-up never waits on a resolver).
- Avatars are ``https://`` URLs on a public host name: no IP literal in any notation, no single-label host such as
  ``localhost``, no userinfo, no port but 443, and none of the configured internal suffixes. URLs under minidoor's
  own ``ISSUER`` are allowed whatever their scheme (``make run`` serves on plain http).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from confusable_homoglyphs import confusables
from email_validator import EmailNotValidError, validate_email

from shared.config import UserStoreConfig
from shared.errors import BadRequest

#: Casdoor's rule for a user name taken from the ``username`` parameter; Chinese nicknames fail it.
USERNAME_RE = re.compile(r"^[a-zA-Z0-9]+([-._][a-zA-Z0-9]+)*$")
MAX_NAME = 100
MAX_DISPLAY_NAME = 100
MAX_AVATAR = 1024
MAX_EMAIL = 254
#: The last label of a public host name: letters (or an IDNA ``xn--`` label), never digits or ``0x``.
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: ASCII characters that read as another: what UTS #39's table maps among plain letters and digits.
_ASCII_LOOKALIKES = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "5": "s", "$": "s", "@": "a"})
#: Separators that do not change how a name reads (``ad.min``, ``ad_min``).
_SEPARATORS = re.compile(r"[\s\-_.·・]+")


def normalize(text: str) -> str:
    """NFKC: full-width and compatibility forms become their plain characters."""
    return unicodedata.normalize("NFKC", text)


@cache
def _prototype(char: str) -> str:
    """The ASCII character ``char`` is confusable with, per the Unicode confusables table; else ``char``."""
    if char.isascii():
        return char
    found = confusables.is_confusable(char, greedy=True, preferred_aliases=["latin", "common"])
    for entry in found or ():
        for homoglyph in entry["homoglyphs"]:
            candidate = str(homoglyph["c"])
            if candidate.isascii() and candidate.isalnum():
                return candidate.lower()
    return char


def skeleton(text: str) -> str:
    """A string's look: equal skeletons read the same to a person (UTS #39, plus ASCII digit/letter look-alikes)."""
    folded = normalize(text).casefold()
    mapped = "".join(_prototype(ch) for ch in folded).casefold()
    mapped = _SEPARATORS.sub("", mapped).translate(_ASCII_LOOKALIKES)
    return mapped.replace("rn", "m").replace("vv", "w")


def _printable(field: str, value: str) -> None:
    if any(not ch.isprintable() for ch in value):
        raise BadRequest("{field} must not contain control characters", field=field)


@dataclass(frozen=True, slots=True)
class UserRules:
    reserved: frozenset[str]
    forbidden_suffixes: tuple[str, ...]
    issuer: str

    @classmethod
    def from_config(cls, config: UserStoreConfig) -> UserRules:
        return cls.build(config.reserved_names, config.avatar_forbidden_suffixes, config.issuer)

    @classmethod
    def build(cls, reserved_names: str, forbidden_suffixes: str, issuer: str) -> UserRules:
        names = [item.strip() for item in reserved_names.split(",") if item.strip()]
        suffixes = [item.strip().lower().lstrip(".") for item in forbidden_suffixes.split(",") if item.strip()]
        return cls(frozenset(skeleton(name) for name in names), tuple(suffixes), issuer.rstrip("/"))

    def is_reserved(self, text: str) -> bool:
        """Whether ``text`` is a reserved name or looks like one."""
        return bool(text) and skeleton(text) in self.reserved

    def user_name(self, field: str, value: str) -> str:
        """A user name: Casdoor's alphabet, at most ``MAX_NAME``, not reserved."""
        text = normalize(value)
        if len(text) > MAX_NAME or not USERNAME_RE.match(text):
            raise BadRequest(
                "{field} is invalid: at most {max_name} letters and digits, separated by single '-', '_' or '.'",
                field=field,
                max_name=MAX_NAME,
            )
        if self.is_reserved(text):
            raise BadRequest("{field} is reserved; choose another", field=field)
        return text

    def display_name(self, field: str, value: str, *, required: bool = False) -> str:
        """A display name: printable, at most ``MAX_DISPLAY_NAME`` after NFKC, not a reserved name's look-alike."""
        text = normalize(value)
        _printable(field, text)
        if required and not text.strip():
            raise BadRequest("{field} cannot be empty", field=field)
        if len(text) > MAX_DISPLAY_NAME:
            raise BadRequest(
                "{field} must be at most {max_display_name} characters", field=field, max_display_name=MAX_DISPLAY_NAME
            )
        if self.is_reserved(text):
            raise BadRequest("{field} is reserved; choose another", field=field)
        return text

    def email(self, field: str, value: str) -> str:
        """A syntactically valid address (internationalized allowed), normalized as ``email-validator`` does."""
        if not value:
            return value
        if len(value) > MAX_EMAIL:
            raise BadRequest("{field} must be at most {max_email} characters", field=field, max_email=MAX_EMAIL)
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise BadRequest("{field} is invalid: {detail}", field=field, detail=str(exc)) from None

    def avatar(self, field: str, value: str) -> str:
        """An avatar URL a browser may fetch without reaching anything internal (see the module docstring)."""
        if not value:
            return value
        error = BadRequest(
            "{field} must be an https URL of at most {max_avatar} characters on a public host name"
            " (no IP address, port or user name)",
            field=field,
            max_avatar=MAX_AVATAR,
        )
        if len(value) > MAX_AVATAR or any(ch.isspace() or not ch.isprintable() for ch in value):
            raise error
        if self.issuer and value.startswith(self.issuer + "/"):
            return value
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise error from None
        host = (parts.hostname or "").rstrip(".")
        if parts.scheme != "https" or "@" in parts.netloc or port not in (None, 443) or not _public_host(host):
            raise error
        if any(host == suffix or host.endswith("." + suffix) for suffix in self.forbidden_suffixes):
            raise error
        return value


def _public_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    labels = ascii_host.split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels) and bool(_TLD.match(labels[-1]))
