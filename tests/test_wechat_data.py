"""Legacy encryptedData: the official demo vector, vectors made here with a known session_key (a bad padding among
them), and ``POST /api/decrypt-wechat-data`` end to end with the session_key of the bearer's own login."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.errors import BadRequest, Forbidden
from tests.account_helpers import api
from tests.oauth_helpers import eventually, issued_session_key, stack_login
from user_store.wechat_data import StaleSessionKey, decrypt_wechat_data

# WeChat's official demo data (reference wechat-api.md §3b; the encryptedData as in wechatpy's tests).
DEMO_APPID = "wx4f4bc4dec97d474b"
DEMO_SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="
DEMO_IV = "r7BXXKkLb8qrSNn05n0qiA=="
DEMO_ENCRYPTED = (
    "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+3hVbJSRgv+4lGOE"
    "TKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJ"
    "Xwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrX"
    "d2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKd"
    "YmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew=="
)
KEY = base64.b64encode(bytes(range(16))).decode()
APPID = "wx-known-key"


def encrypt(session_key: str, payload: Any, *, iv: bytes | None = None, pad: bytes | None = None) -> tuple[str, str]:
    """``(encryptedData, iv)`` as WeChat makes them: AES-128-CBC, PKCS#7 (or the given ``pad`` bytes)."""
    iv = iv or os.urandom(16)
    plain = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    n = 16 - len(plain) % 16
    padded = plain + (pad if pad is not None else bytes([n]) * n)
    encryptor = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(iv)).encryptor()
    data = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(data).decode(), base64.b64encode(iv).decode()


def phone(appid: str = APPID, timestamp: int | None = None) -> dict[str, Any]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "phoneNumber": "+86 13800138000",
        "purePhoneNumber": "13800138000",
        "countryCode": "86",
        "watermark": {"appid": appid, "timestamp": stamp},
    }


class TestDemoVector:
    def test_official_demo_vector(self):
        """The official demo data decrypts to its userInfo, watermark appid wx4f4bc4dec97d474b, timestamp 1477314187
        (2016, so the freshness check is off)."""
        doc = decrypt_wechat_data(DEMO_SESSION_KEY, DEMO_ENCRYPTED, DEMO_IV, appids={DEMO_APPID}, max_age=0)
        assert doc["watermark"] == {"timestamp": 1477314187, "appid": DEMO_APPID}
        assert doc["openId"] == "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
        assert doc["nickName"] == "Band" and doc["city"] == "Guangzhou"

    def test_demo_vector_is_stale_with_a_freshness_window(self):
        """With a freshness window the 2016 vector is refused as too old."""
        with pytest.raises(BadRequest, match="timestamp is more than 600 s old"):
            decrypt_wechat_data(DEMO_SESSION_KEY, DEMO_ENCRYPTED, DEMO_IV, appids={DEMO_APPID}, max_age=600)

    def test_demo_vector_for_another_app(self):
        """The demo data's watermark names its own appid: for any other mini program, 403."""
        with pytest.raises(Forbidden, match="watermark appid"):
            decrypt_wechat_data(DEMO_SESSION_KEY, DEMO_ENCRYPTED, DEMO_IV, appids={"wx-other"}, max_age=0)


class TestKnownKey:
    def test_round_trip(self):
        """Data encrypted here with a known key comes back whole."""
        data, iv = encrypt(KEY, phone())
        doc = decrypt_wechat_data(KEY, data, iv, appids={APPID}, max_age=600)
        assert doc["purePhoneNumber"] == "13800138000" and doc["watermark"]["appid"] == APPID

    def test_wrong_key_is_stale_session_key(self):
        """Another session_key (one rotated by a later wx.login()) is a 400 that says the session_key is stale."""
        data, iv = encrypt(KEY, phone())
        other = base64.b64encode(os.urandom(16)).decode()
        # A wrong key leaves a valid-looking pad about once in 256 tries, and then bytes that are not JSON.
        with pytest.raises(StaleSessionKey, match="session_key is stale") as info:
            decrypt_wechat_data(other, data, iv, appids={APPID}, max_age=0)
        assert info.value.status == 400

    @pytest.mark.parametrize("pad", [b"\x00" * 4, b"\x11" * 17, b"\x03\x03\x02", b"\x05" * 3 + b"\x04" * 2])
    def test_bad_padding(self, pad):
        """A padding that is not PKCS#7 (zero, longer than a block, inconsistent bytes) is the stale-key 400."""
        plain = json.dumps(phone()).encode()
        plain += b" " * ((-len(plain) - len(pad)) % 16)
        data, iv = encrypt(KEY, plain, pad=pad)
        with pytest.raises(StaleSessionKey, match="bad padding"):
            decrypt_wechat_data(KEY, data, iv, appids={APPID}, max_age=0)

    def test_not_json_is_stale(self):
        """Well-padded bytes that are not a JSON object are the stale-key 400 too."""
        for payload in (b"\xff\xfe garbage", b"[1, 2, 3]"):
            data, iv = encrypt(KEY, payload)
            with pytest.raises(StaleSessionKey):
                decrypt_wechat_data(KEY, data, iv, appids={APPID}, max_age=0)

    def test_freshness_window(self):
        """A watermark older (or further ahead) than max_age is refused; max_age 0 turns the check off."""
        data, iv = encrypt(KEY, phone(timestamp=int(time.time()) - 3600))
        with pytest.raises(BadRequest, match="old"):
            decrypt_wechat_data(KEY, data, iv, appids={APPID}, max_age=600)
        assert decrypt_wechat_data(KEY, data, iv, appids={APPID}, max_age=0)["countryCode"] == "86"
        ahead, iv2 = encrypt(KEY, phone(timestamp=int(time.time()) + 3600))
        with pytest.raises(BadRequest, match="ahead"):
            decrypt_wechat_data(KEY, ahead, iv2, appids={APPID}, max_age=600)

    def test_malformed_input(self):
        """Not base64, an iv that is not 16 bytes, a ciphertext that is not whole blocks, no watermark: 400 each."""
        data, iv = encrypt(KEY, phone())
        cases = [
            ("not base64!", iv, "encryptedData must be base64"),
            (data, base64.b64encode(b"short").decode(), "iv must be 16 bytes"),
            (base64.b64encode(b"x" * 15).decode(), iv, "whole 16-byte"),
            ("", iv, "encryptedData must be 1"),
        ]
        for encrypted, vector, message in cases:
            with pytest.raises(BadRequest, match=message):
                decrypt_wechat_data(KEY, encrypted, vector, appids={APPID}, max_age=0)
        bare, iv3 = encrypt(KEY, {"phoneNumber": "1"})
        with pytest.raises(BadRequest, match="no watermark"):
            decrypt_wechat_data(KEY, bare, iv3, appids={APPID}, max_age=0)

    def test_login_without_session_key(self):
        """A login that holds no session_key cannot decrypt anything: a 400 that says to log in again."""
        data, iv = encrypt(KEY, phone())
        with pytest.raises(BadRequest, match="holds no WeChat session_key"):
            decrypt_wechat_data("", data, iv, appids={APPID}, max_age=0)


class TestEndpoint:
    async def test_decrypts_with_the_logins_session_key(self, session, stack, db):
        """The bearer's login's session_key (sealed at rest) opens data WeChat encrypted with it, for the demo
        app's mini program; a form body or JSON both work; the answer is Casdoor's envelope; an audit row says
        what kind of data it was, never its content."""
        codes: list[str] = []
        token = await stack_login(session, stack, "o-legacy-phone", codes=codes)
        session_key = await issued_session_key(session, stack, codes[0])
        data, iv = encrypt(session_key, phone(stack.demo["wechatAppId"]))
        path = "/api/decrypt-wechat-data"
        body = await api(
            session, stack, "POST", path, token=token["access_token"], data={"encryptedData": data, "iv": iv}
        )
        assert body["data"]["purePhoneNumber"] == "13800138000"
        body = await api(
            session, stack, "POST", path, token=token["access_token"], json={"encryptedData": data, "iv": iv}
        )
        assert body["data"]["watermark"]["appid"] == stack.demo["wechatAppId"]
        assert not await db.fetchval("SELECT count(*) FROM tokens WHERE session_key = $1", session_key)
        query = "SELECT count(*) FROM audit_events WHERE action = 'wechat_data_decrypted' AND outcome = 'ok'"

        async def audited() -> bool:
            return bool(await db.fetchval(query))

        await eventually(audited, 5, "the wechat_data_decrypted audit row")
        details = await db.fetchval(
            "SELECT details::text FROM audit_events WHERE action = 'wechat_data_decrypted' ORDER BY id DESC LIMIT 1"
        )
        assert "13800138000" not in details and "phone" in details
        assert "13800138000" not in stack.log_tail(200_000)

    async def test_stale_session_key_and_foreign_watermark(self, session, stack):
        """After a second wx.login() the first login's data no longer opens with the new login's key: 400 saying
        the session_key is stale; data for another mini program is 403; a stale watermark 400."""
        codes: list[str] = []
        first = await stack_login(session, stack, "o-legacy-stale", codes=codes)
        second = await stack_login(session, stack, "o-legacy-stale", codes=codes)
        old_key = await issued_session_key(session, stack, codes[0])
        data, iv = encrypt(old_key, phone(stack.demo["wechatAppId"]))
        path = "/api/decrypt-wechat-data"
        form = {"encryptedData": data, "iv": iv}
        body = await api(session, stack, "POST", path, status=400, token=second["access_token"], data=form)
        assert "session_key is stale" in body["msg"]
        await api(session, stack, "POST", path, token=first["access_token"], data=form)
        foreign, iv2 = encrypt(old_key, phone("wx-someone-else"))
        form = {"encryptedData": foreign, "iv": iv2}
        body = await api(session, stack, "POST", path, status=403, token=first["access_token"], data=form)
        assert "watermark appid" in body["msg"]
        old, iv3 = encrypt(old_key, phone(stack.demo["wechatAppId"], timestamp=1_477_314_187))
        form = {"encryptedData": old, "iv": iv3}
        body = await api(session, stack, "POST", path, status=400, token=first["access_token"], data=form)
        assert "timestamp" in body["msg"]

    async def test_needs_a_users_token(self, session, stack):
        """Without a token 401; with client credentials 401 (an application has no login); without data 400."""
        path = "/api/decrypt-wechat-data"
        await api(session, stack, "POST", path, status=401, data={"encryptedData": "x", "iv": "y"})
        creds = {"clientId": stack.demo["clientId"], "clientSecret": stack.demo["clientSecret"]}
        await api(session, stack, "POST", path, status=401, params=creds, data={"encryptedData": "x", "iv": "y"})
        token = await stack_login(session, stack, "o-legacy-empty")
        body = await api(session, stack, "POST", path, status=400, token=token["access_token"], data={"iv": "y"})
        assert "encryptedData and iv" in body["msg"]
