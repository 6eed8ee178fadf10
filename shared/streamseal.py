"""Secrets in Redis that can reach disk (AOF, RDB): session_keys in exchange records, tokens in exchange records
and reply streams, sealed with AES-256-GCM under a key derived from ``STREAM_SEAL_KEY``.

The gateway and the auth workers share the key; without one (an empty ``STREAM_SEAL_KEY``) they write in clear, as
before. A sealed blob is ``version || nonce || ciphertext+tag`` with its purpose as associated data, so a sealed
session never opens as a token. Readers accept both the clear and the sealed tags, so a key can be introduced
without draining anything.
"""

from __future__ import annotations

import os

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.config import MIN_KEY_CHARS
from shared.errors import Unavailable
from shared.messages import (
    LoginSucceeded,
    LoginSucceededSealed,
    Reply,
    TokenResponse,
    WechatSession,
    WechatSessionSealed,
)

_VERSION = b"\x01"
_NONCE_BYTES = 12
_TOKEN = b"token"
_SESSION = b"session"
_token_decoder = msgspec.msgpack.Decoder(TokenResponse)
_session_decoder = msgspec.msgpack.Decoder(WechatSession)
_encoder = msgspec.msgpack.Encoder()


class StreamSeal:
    """AES-256-GCM under a key derived from the shared secret; the secret itself is not kept."""

    __slots__ = ("_aead",)

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_KEY_CHARS:
            raise ValueError(f"STREAM_SEAL_KEY must be at least {MIN_KEY_CHARS} characters")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"minidoor redis seal v1")
        self._aead = AESGCM(hkdf.derive(secret.encode()))

    def __repr__(self) -> str:
        return "StreamSeal('**********')"

    def seal(self, plaintext: bytes, purpose: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose)

    def open(self, sealed: bytes, purpose: bytes) -> bytes:
        """The plaintext; ``Unavailable`` when the blob was sealed under another key (a misconfigured rollout)."""
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise Unavailable("a sealed login message is in a format this version cannot read", retry_after=1)
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :], purpose)
        except InvalidTag:
            raise Unavailable(
                "a sealed login message does not open: STREAM_SEAL_KEY differs between gateway and workers",
                retry_after=1,
            ) from None


def stream_seal(secret: str) -> StreamSeal | None:
    return StreamSeal(secret) if secret else None


def seal_reply(seal: StreamSeal | None, reply: Reply) -> Reply:
    """``reply`` with its token sealed (a ``LoginSucceededSealed``) when there is a key."""
    if seal is None or not isinstance(reply, LoginSucceeded):
        return reply
    box = seal.seal(_encoder.encode(reply.token), _TOKEN)
    return LoginSucceededSealed(job_id=reply.job_id, sealed=box, record=reply.record)


def open_reply(seal: StreamSeal | None, reply: Reply) -> Reply:
    """``reply`` with its token in clear (``Unavailable`` when it is sealed and this process cannot open it)."""
    if not isinstance(reply, LoginSucceededSealed):
        return reply
    if seal is None:
        raise Unavailable("a login answer is sealed but STREAM_SEAL_KEY is not set here", retry_after=1)
    token = _token_decoder.decode(seal.open(reply.sealed, _TOKEN))
    return LoginSucceeded(job_id=reply.job_id, token=token, record=reply.record)


def seal_session(seal: StreamSeal | None, session: WechatSession) -> WechatSession | WechatSessionSealed:
    if seal is None:
        return session
    return WechatSessionSealed(sealed=seal.seal(_encoder.encode(session), _SESSION))


def open_session(seal: StreamSeal | None, session: WechatSession | WechatSessionSealed) -> WechatSession:
    if isinstance(session, WechatSession):
        return session
    if seal is None:
        raise Unavailable("a stored WeChat session is sealed but STREAM_SEAL_KEY is not set here", retry_after=1)
    return _session_decoder.decode(seal.open(session.sealed, _SESSION))
