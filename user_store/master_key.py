"""The master key, which encrypts secrets at rest: signing keys, provider secrets and WeChat session keys (key
material itself is ``user_store/signing_keys/material.py``).

The master key is any secret of at least 32 characters (``make run`` generates one into ``STATE_DIR/master.key``);
HKDF-SHA256 turns it into one AES-256-GCM key per purpose. A sealed blob is ``version || nonce || ciphertext+tag``
with the row's identity as associated data (a signing key's kid, a provider's id), so a blob copied onto another row
does not open.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.config import MIN_KEY_CHARS, ConfigError

_VERSION = b"\x01"
_NONCE_BYTES = 12
_HKDF_INFO = b"minidoor signing keys v1"
# A key of its own rather than the signing keys' key with a prefixed AAD: a blob of one purpose can then never open
# as the other whatever the AAD values, and each purpose can move to a new version alone.
_HKDF_INFO_PROVIDER_SECRETS = b"minidoor provider secrets v1"
_HKDF_INFO_SESSION_KEYS = b"minidoor session keys v1"


class WrongMasterKey(ConfigError):
    """A sealed blob does not open: the master key is not the one it was sealed with (or the row is damaged)."""


class MasterKey:
    """AES-256-GCM under keys derived from the master secret; the secret itself is not kept."""

    __slots__ = ("_aead", "_provider_aead", "_session_aead", "previous")

    def __init__(self, secret: str, previous: MasterKey | None = None) -> None:
        if len(secret) < MIN_KEY_CHARS:
            raise ConfigError(f"the master key must be at least {MIN_KEY_CHARS} characters")
        self._aead = _derive(secret, _HKDF_INFO)
        self._provider_aead = _derive(secret, _HKDF_INFO_PROVIDER_SECRETS)
        self._session_aead = _derive(secret, _HKDF_INFO_SESSION_KEYS)
        #: ``MASTER_KEY_PREVIOUS`` during a rollover: read when this key does not open a blob, never written.
        self.previous = previous

    def __repr__(self) -> str:
        return "MasterKey('**********')"

    def seal(self, plaintext: bytes, kid: str) -> bytes:
        return _seal(self._aead, plaintext, kid.encode())

    def open(self, sealed: bytes, kid: str) -> bytes:
        """The plaintext of ``seal(plaintext, kid)``; ``WrongMasterKey`` when this key did not seal it."""
        try:
            return _open(self._aead, sealed, kid.encode(), f"signing key {kid}")
        except WrongMasterKey:
            if self.previous is None:
                raise
            return self.previous.open(sealed, kid)

    def seal_provider_secret(self, plaintext: bytes, provider_id: str) -> bytes:
        return _seal(self._provider_aead, plaintext, provider_id.encode())

    def open_provider_secret(self, sealed: bytes, provider_id: str, name: str) -> bytes:
        """The plaintext of ``seal_provider_secret(plaintext, provider_id)``; ``WrongMasterKey`` naming provider
        ``name`` when this key did not seal it for this provider."""
        try:
            return _open(self._provider_aead, sealed, provider_id.encode(), f"the secret of provider {name}")
        except WrongMasterKey:
            if self.previous is None:
                raise
            return self.previous.open_provider_secret(sealed, provider_id, name)

    def seal_session_key(self, plaintext: bytes, row: str) -> bytes:
        return _seal(self._session_aead, plaintext, row.encode())

    def open_session_key(self, sealed: bytes, row: str) -> bytes:
        """The plaintext of ``seal_session_key(plaintext, row)``; ``WrongMasterKey`` when this key did not seal it."""
        try:
            return _open(self._session_aead, sealed, row.encode(), f"the session_key of {row}")
        except WrongMasterKey:
            if self.previous is None:
                raise
            return self.previous.open_session_key(sealed, row)


def _derive(secret: str, info: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode()))


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, sealed: bytes, aad: bytes, what: str) -> bytes:
    if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
        raise WrongMasterKey("{what} is not in a format this version can read", what=what)
    try:
        return aead.decrypt(sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :], aad)
    except InvalidTag:
        raise WrongMasterKey(
            "{what} cannot be decrypted: MASTER_KEY / MASTER_KEY_FILE is not the master key it was encrypted with "
            "(or the stored value was copied from another row)",
            what=what,
        ) from None


def new_master_secret() -> str:
    return secrets.token_urlsafe(32)


def load_master_key(master_key: str, master_key_file: str, previous: str = "") -> MasterKey | None:
    """The master key from its value or its file (``ConfigError`` if both, or if the file is unreadable/empty);
    ``previous`` (``MASTER_KEY_PREVIOUS``) is accepted for reading during a rollover."""
    if master_key and master_key_file:
        raise ConfigError("set MASTER_KEY or MASTER_KEY_FILE, not both")
    if master_key_file:
        try:
            master_key = Path(master_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"MASTER_KEY_FILE {master_key_file} cannot be read ({exc})") from None
        if not master_key:
            raise ConfigError(f"MASTER_KEY_FILE {master_key_file} is empty")
    if previous and not master_key:
        raise ConfigError("MASTER_KEY_PREVIOUS is set without MASTER_KEY / MASTER_KEY_FILE")
    return MasterKey(master_key, MasterKey(previous) if previous else None) if master_key else None


def master_key_from_env(environ: Mapping[str, str], default_file: Path | None = None) -> MasterKey | None:
    """For tools (the admin CLI): ``MASTER_KEY``, ``MASTER_KEY_FILE``, else ``default_file`` when it exists."""
    value, path = environ.get("MASTER_KEY", ""), environ.get("MASTER_KEY_FILE", "")
    if not value and not path and default_file is not None and default_file.exists():
        path = str(default_file)
    return load_master_key(value, path, environ.get("MASTER_KEY_PREVIOUS", ""))


def ensure_master_key_file(path: Path) -> None:
    """Create ``path`` holding a new master secret, readable by its owner only, unless it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # a key file copied in with a looser mode
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new_master_secret() + "\n")
