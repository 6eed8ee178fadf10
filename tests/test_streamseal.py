"""Session keys and tokens sealed in Redis under STREAM_SEAL_KEY: every live message version still decodes."""

from __future__ import annotations

import msgspec
import pytest

from shared.errors import Unavailable
from shared.messages import (
    LoginFailed,
    LoginSucceeded,
    LoginSucceededSealed,
    TokenResponse,
    WechatSession,
    WechatSessionSealed,
    reply_decoder,
    session_decoder,
)
from shared.streamseal import StreamSeal, open_reply, open_session, seal_reply, seal_session

KEY = "k" * 40
TOKEN = TokenResponse(
    access_token="at", id_token="at", refresh_token="rt", token_type="Bearer", expires_in=7200, scope="read"
)
SESSION = WechatSession(openid="o1", session_key="sk1", unionid="u1")

# Stored samples, one per live tag, as written by the versions that write them (sealed ones under KEY).
SUCCEEDED_V1 = bytes.fromhex(
    "84a474797065b26c6f67696e5f7375636365656465642e7631a66a6f625f6964a26a31a5746f6b656e86ac6163636573735f"
    "746f6b656ea26174a869645f746f6b656ea26174ad726566726573685f746f6b656ea27274aa746f6b656e5f74797065a642"
    "6561726572aa657870697265735f696ecd1c20a573636f7065a472656164a67265636f7264a27231"
)
FAILED_V1 = bytes.fromhex(
    "87a474797065af6c6f67696e5f6661696c65642e7631a66a6f625f6964a26a32a6737461747573cd0190a56572726f72ad69"
    "6e76616c69645f6772616e74b16572726f725f6465736372697074696f6ea475736564ab72657472795f6166746572c0a672"
    "65636f7264a27232"
)
SUCCEEDED_SEALED_V1 = bytes.fromhex(
    "84a474797065b96c6f67696e5f7375636365656465645f7365616c65642e7631a66a6f625f6964a26a31a67365616c6564c4"
    "76019fb2cc5d3120a49b98246f21f011d412cd176b1e8f114312d1d508cf289191ee3609486b264a1734714942e2c69b8dae"
    "1dfb668a1b836b5fe3c3a03a432f821b77fb4f763cac456042cdbe928a4f3c33cc88a24acf775135a00a976acf1bce561149"
    "103782838b8f8009a671274ee5c499454bb981a67265636f7264a27231"
)
SESSION_V1 = bytes.fromhex(
    "84a474797065b17765636861745f73657373696f6e2e7631a66f70656e6964a26f31ab73657373696f6e5f6b6579a3736b31"
    "a7756e696f6e6964a27531"
)
SESSION_SEALED_V1 = bytes.fromhex(
    "82a474797065b87765636861745f73657373696f6e5f7365616c65642e7631a67365616c6564c45a01c551c7d38d7b8345e0"
    "d3100e4aba1f3a62f02cd44ba9434fa6e6000be7615f2076be0faf52961a4b2ddc6d256d3e15d1717c5153ea12386f419f11"
    "2577eeb364cbf60141eada5ce65e06725352eb3bf6f08593ba764c0198d3"
)


class TestStoredSamples:
    def test_each_live_reply_version_decodes(self):
        """A reply stream or exchange record may hold any live tag; each decodes, and the sealed one opens to the
        same answer as the clear one."""
        seal = StreamSeal(KEY)
        clear = reply_decoder.decode(SUCCEEDED_V1)
        assert clear == LoginSucceeded(job_id="j1", token=TOKEN, record="r1")
        failed = reply_decoder.decode(FAILED_V1)
        assert isinstance(failed, LoginFailed) and failed.status == 400 and failed.record == "r2"
        sealed = reply_decoder.decode(SUCCEEDED_SEALED_V1)
        assert isinstance(sealed, LoginSucceededSealed) and b"rt" not in sealed.sealed
        assert open_reply(seal, sealed) == clear
        assert open_reply(seal, clear) == clear and open_reply(None, failed) == failed

    def test_each_live_session_version_decodes(self):
        """An exchange record's session is WechatSession or WechatSessionSealed; both give the same session."""
        seal = StreamSeal(KEY)
        assert open_session(seal, session_decoder.decode(SESSION_V1)) == SESSION
        sealed = session_decoder.decode(SESSION_SEALED_V1)
        assert isinstance(sealed, WechatSessionSealed)
        assert open_session(seal, sealed) == SESSION


class TestSealing:
    def test_sealed_messages_hold_no_secret(self):
        """With a key, the encoded reply and session hold neither token nor session_key; without, they pass as is."""
        seal = StreamSeal(KEY)
        reply = LoginSucceeded(job_id="j", token=TOKEN)
        encoded = msgspec.msgpack.encode(seal_reply(seal, reply))
        assert b"refresh_token" not in encoded and b"rt" not in encoded.split(b"sealed")[0]
        assert b"sk1" not in msgspec.msgpack.encode(seal_session(seal, SESSION))
        assert seal_reply(None, reply) is reply and seal_session(None, SESSION) is SESSION

    def test_wrong_or_missing_key_is_unavailable(self):
        """A blob sealed under another key, or read without a key, is a 503, never a wrong answer."""
        sealed = seal_reply(StreamSeal(KEY), LoginSucceeded(job_id="j", token=TOKEN))
        with pytest.raises(Unavailable, match="STREAM_SEAL_KEY"):
            open_reply(StreamSeal("x" * 40), sealed)
        with pytest.raises(Unavailable, match="STREAM_SEAL_KEY"):
            open_reply(None, sealed)

    def test_purposes_do_not_mix(self):
        """A sealed session does not open as a token: the purpose is the associated data."""
        seal = StreamSeal(KEY)
        session = seal_session(seal, SESSION)
        assert isinstance(session, WechatSessionSealed)
        with pytest.raises(Unavailable):
            open_reply(seal, LoginSucceededSealed(job_id="j", sealed=session.sealed))
