"""The user store's batch of logins (``shared.messages.WechatLogins``, ``LoginOutcomes``): stored samples of the wire
form decode, so workers and user stores of different versions keep understanding each other."""

from __future__ import annotations

import msgspec

from shared.messages import LoginOutcomes, WechatLogin, WechatLogins

LOGINS_V1 = (
    b'{"logins":[{"client_id":"c","appid":"wx","openid":"o","session_key":"sk","unionid":"","username":"",'
    b'"avatar":""}],"request_ids":["r"],"client_ips":["1.2.3.4"]}'
)
OUTCOMES_V1 = (
    b'{"outcomes":[{"result":{"user_id":"u","user_name":"n","created":true,"token":{"access_token":"at",'
    b'"id_token":"it","refresh_token":"rt","token_type":"Bearer","expires_in":7200,"scope":"openid"}},'
    b'"status":200,"error":null,"retry_after":null},{"result":null,"status":503,"error":{"error":'
    b'"temporarily_unavailable","error_description":"db"},"retry_after":1}]}'
)


def test_stored_samples_decode():
    """A batch request and its outcomes, as stored, decode to one outcome per login in order; a request without the
    optional per-login lists decodes too."""
    logins = msgspec.json.decode(LOGINS_V1, type=WechatLogins)
    assert logins.logins == [WechatLogin(client_id="c", appid="wx", openid="o", session_key="sk")]
    assert msgspec.json.decode(b'{"logins":[]}', type=WechatLogins).request_ids == []
    ok, failed = msgspec.json.decode(OUTCOMES_V1, type=LoginOutcomes).outcomes
    assert ok.result is not None and ok.result.token.access_token == "at" and ok.error is None
    assert failed.result is None and failed.status == 503 and failed.retry_after == 1
    assert failed.error is not None and failed.error.error == "temporarily_unavailable"
