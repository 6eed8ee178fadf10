"""Legacy ``encryptedData``: what an old mini program still sends from ``getPhoneNumber`` or ``getUserInfo``,
opened with the session_key of the bearer token's own login (reference wechat-api.md §3b).

AES-128-CBC under the base64-decoded session_key and iv, PKCS#7 padding, a JSON object with a ``watermark``
{``appid``, ``timestamp``}. The watermark's AppID must be one of the token's application's mini programs, and its
timestamp within ``WECHAT_DATA_MAX_AGE`` seconds of now (0 turns the check off, for the 2016 demo vector). A bad
padding or a plaintext that is not JSON almost always means the client rotated its session_key (``wx.login()`` in
the button's callback): a 400 that says so. The plaintext is personal data: it is answered, never logged.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Collection
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.errors import BadRequest, Forbidden, InvalidToken
from shared.messages import DecryptedData, WechatDataRequest
from user_store.audit import AuditWriter
from user_store.callers import authenticate, require_user
from user_store.db import Pool, connection
from user_store.master_key import MasterKey
from user_store.queries.tokens import token_session_key
from user_store.session_keys import family_row, open_session_key
from user_store.signing_keys.signer import Signer

#: The largest encryptedData taken, base64 (a userInfo payload is under 1 KiB; the gateway caps parameters at 4 KiB).
MAX_ENCRYPTED_CHARS = 4096
_BLOCK = 16
_decode_json = msgspec.json.Decoder()


class StaleSessionKey(BadRequest):
    """The data does not open under this login's session_key: the client most likely rotated it."""


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest("{what} must be base64", what=what) from None


def decrypt_wechat_data(
    session_key: str,
    encrypted_data: str,
    iv: str,
    *,
    appids: Collection[str],
    max_age: float,
    now: float | None = None,
) -> dict[str, Any]:
    """The JSON object ``encrypted_data`` holds, once its watermark names one of ``appids`` and (``max_age`` > 0)
    its timestamp is at most ``max_age`` seconds away from ``now``; ``BadRequest`` (``StaleSessionKey`` for a bad
    padding or garbage) otherwise."""
    if not encrypted_data or len(encrypted_data) > MAX_ENCRYPTED_CHARS:
        raise BadRequest("encryptedData must be 1 to {limit} base64 characters", limit=MAX_ENCRYPTED_CHARS)
    ciphertext = _b64(encrypted_data, "encryptedData")
    vector = _b64(iv, "iv")
    if len(vector) != _BLOCK:
        raise BadRequest("iv must be 16 bytes, base64")
    if not ciphertext or len(ciphertext) % _BLOCK:
        raise BadRequest("encryptedData must be whole 16-byte AES blocks")
    try:
        key = base64.b64decode(session_key) if session_key else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _BLOCK:
        raise BadRequest("this login holds no WeChat session_key to decrypt with; log in with wx.login() again")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(vector)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    plaintext = _unpad(padded)
    try:
        doc = _decode_json.decode(plaintext)
    except msgspec.DecodeError:
        raise _stale() from None
    if not isinstance(doc, dict):
        raise _stale()
    watermark = doc.get("watermark")
    if not isinstance(watermark, dict) or not isinstance(watermark.get("appid"), str):
        raise BadRequest("the decrypted data has no watermark appid")
    if watermark["appid"] not in appids:
        raise Forbidden("the data's watermark appid is not this application's mini program")
    if max_age > 0:
        stamp = watermark.get("timestamp")
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            raise BadRequest("the decrypted data has no watermark timestamp")
        age = (time.time() if now is None else now) - stamp
        if abs(age) > max_age:
            raise BadRequest(
                "the data's watermark timestamp is more than {seconds} s old (or ahead); get it again",
                seconds=f"{max_age:g}",
            )
    return doc


def _unpad(padded: bytes) -> bytes:
    """PKCS#7 with 16-byte blocks, checked whole (every pad byte), as a wrong key leaves random bytes at the end."""
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise _stale()
    return padded[:-pad]


def _stale() -> StaleSessionKey:
    return StaleSessionKey(
        "the data does not decrypt with this login's session_key (bad padding): the session_key is stale, most "
        "likely rotated by a wx.login() after this token's login; log in again, then get the data again"
    )


async def decrypt_for_caller(
    pool: Pool,
    signer: Signer,
    request: WechatDataRequest,
    *,
    master: MasterKey | None,
    max_age: float,
    audit: AuditWriter | None = None,
) -> DecryptedData:
    """Authenticate the bearer, open its login's session_key and decrypt with it; audited either way (no data)."""
    async with connection(pool) as conn:
        caller = await authenticate(conn, signer, request.credentials)
        user_id = require_user(caller, "decrypt-wechat-data")
        assert caller.token is not None
        row = await token_session_key(conn, caller.token.token_id)
    if row is None:  # expired and pruned since it was checked
        raise InvalidToken("the access token is invalid, expired or revoked; log in again")
    family = family_row(row["family_id"])
    session_key = open_session_key(master, family, row["session_key"], row["session_key_sealed"])
    who = {
        "actor_kind": "user",
        "actor_id": user_id,
        "target_user_id": user_id,
        "organization": caller.organization,
        "client_id": caller.client_id,
    }
    try:
        doc = decrypt_wechat_data(
            session_key, request.encrypted_data, request.iv, appids=row["appids"] or (), max_age=max_age
        )
    except BadRequest as exc:
        structlog.contextvars.bind_contextvars(decrypt_failure=type(exc).__name__)
        if audit is not None:
            audit.record("wechat_data_decrypted", outcome="failure", details={"reason": _reason(exc)}, **who)
        raise
    except Forbidden:
        if audit is not None:
            audit.record("wechat_data_decrypted", outcome="denied", details={"reason": "watermark_appid"}, **who)
        raise
    kind = "phone" if "phoneNumber" in doc else "user_info" if "openId" in doc else "other"
    structlog.contextvars.bind_contextvars(user_id=user_id, data_kind=kind)
    if audit is not None:
        audit.record("wechat_data_decrypted", details={"kind": kind}, **who)
    return DecryptedData(data=doc)


def _reason(exc: BadRequest) -> str:
    if isinstance(exc, StaleSessionKey):
        return "stale_session_key"
    if "timestamp" in exc.description:
        return "stale_data"
    return "malformed"
