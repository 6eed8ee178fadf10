"""The WeChat sandbox speaks jscode2session as WeChat does, and its controls let tests script WeChat's behaviour."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ports import free_port
from services.wechat_sandbox.app import SANDBOX, SandboxState, WeChatError, create_app
from shared.config import ConfigError, SandboxConfig
from tests.conftest import Clock

APPID = "wx0123456789abcdef"
SECRET = "s3cret-s3cret"
OTHER_APPID = "wxfedcba9876543210"
OTHER_SECRET = "other-secret"
REPO_ROOT = Path(__file__).resolve().parents[1]

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture(name="make_client")
async def _make_client() -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(*, clock: Clock | None = None, **overrides: Any) -> Client:
        config = SandboxConfig(sandbox_apps=f"{APPID}:{SECRET},{OTHER_APPID}:{OTHER_SECRET}", **overrides)
        app = create_app(config)
        if clock is not None:
            app[SANDBOX] = SandboxState(config, clock=clock)  # the state create_app made, on the test's clock
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(name="client")
async def _client(make_client: MakeClient) -> Client:
    return await make_client()


async def post_json(client: Client, path: str, data: Any, status: int = 200) -> Any:
    resp = await client.post(path, json=data)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def login(client: Client, appid: str = APPID, **fields: str) -> dict[str, str]:
    result: dict[str, str] = await post_json(client, "/sandbox/login", {"appid": appid, **fields})
    return result


async def exchange(client: Client, code: str, **overrides: str | None) -> dict[str, Any]:
    params: dict[str, str | None] = {
        "appid": APPID,
        "secret": SECRET,
        "js_code": code,
        "grant_type": "authorization_code",
    }
    params.update(overrides)
    resp = await client.get("/sns/jscode2session", params={k: v for k, v in params.items() if v is not None})
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


def assert_errcode(body: dict[str, Any], errcode: int, text: str) -> None:
    assert set(body) == {"errcode", "errmsg"}, body
    assert body["errcode"] == errcode
    assert body["errmsg"].startswith(f"{text}, rid: "), body


class TestJscode2sessionSuccess:
    async def test_success_without_unionid(self, client):
        """A fresh code yields openid and a base64 16-byte session_key, with no errcode and no unionid."""
        issued = await login(client)
        body = await exchange(client, issued["code"])
        assert set(body) == {"openid", "session_key"}
        assert body["openid"] == issued["openid"]
        assert len(base64.b64decode(body["session_key"], validate=True)) == 16

    async def test_success_with_unionid(self, client):
        """A code issued with a unionid answers it, with the openid the test chose."""
        issued = await login(client, openid="oTestUser", unionid="uTestUnion")
        body = await exchange(client, issued["code"])
        assert body["openid"] == "oTestUser"
        assert body["unionid"] == "uTestUnion"
        assert "errcode" not in body

    async def test_codes_and_openids_look_like_wechat(self, client):
        """wx.login mints a new 32-character code per call and a 28-character openid starting with "o"."""
        first, second = await login(client), await login(client)
        assert first["code"] != second["code"]
        assert len(first["code"]) == 32
        assert len(first["openid"]) == 28
        assert first["openid"].startswith("o")
        assert first["openid"] != second["openid"]


class TestJscode2sessionErrors:
    @pytest.mark.parametrize(
        ("overrides", "errcode", "text"),
        [
            ({"appid": None}, 41002, "appid missing"),
            ({"appid": None, "secret": None}, 41002, "appid missing"),
            ({"secret": None}, 41004, "appsecret missing"),
            ({"secret": None, "js_code": None}, 41004, "appsecret missing"),
            ({"js_code": None}, 41008, "missing code"),
            ({"js_code": None, "grant_type": "password"}, 41008, "missing code"),
            ({"grant_type": "password"}, 40002, "invalid grant_type"),
            ({"grant_type": None, "appid": "wxunknown"}, 40002, "invalid grant_type"),
            ({"appid": "wxunknown", "secret": "nope"}, 40013, "invalid appid"),
            ({"secret": "wrong"}, 40125, "invalid appsecret"),
            ({"js_code": "no-such-code"}, 40029, "invalid code"),
        ],
    )
    async def test_errcodes_in_wechat_order(self, client, overrides, errcode, text):
        """Each malformed request gets HTTP 200 with the first failing check's errcode and a rid'd errmsg."""
        issued = await login(client)
        assert_errcode(await exchange(client, issued["code"], **overrides), errcode, text)

    async def test_failed_checks_do_not_spend_the_code(self, client):
        """A code survives any number of rejected calls and still works afterwards."""
        issued = await login(client)
        await exchange(client, issued["code"], secret="wrong")
        await exchange(client, issued["code"], grant_type="client_credential")
        body = await exchange(client, issued["code"])
        assert body["openid"] == issued["openid"]

    async def test_code_for_another_appid(self, client):
        """A code minted for one app is "invalid code" when presented with another app's credentials."""
        issued = await login(client)
        body = await exchange(client, issued["code"], appid=OTHER_APPID, secret=OTHER_SECRET)
        assert_errcode(body, 40029, "invalid code")

    async def test_rids_differ(self, client):
        """Every error carries its own request id, as WeChat's do."""
        first = await exchange(client, "nope")
        second = await exchange(client, "nope")
        assert first["errmsg"] != second["errmsg"]

    async def test_post_is_not_served(self, client):
        """jscode2session is GET only."""
        resp = await client.post("/sns/jscode2session")
        assert resp.status == 405


class TestSingleUse:
    async def test_second_exchange_is_code_been_used(self, client):
        """After one successful exchange the same code answers 40163."""
        issued = await login(client)
        await exchange(client, issued["code"])
        assert_errcode(await exchange(client, issued["code"]), 40163, "code been used")

    async def test_concurrent_exchanges_succeed_once(self, client):
        """Of many simultaneous exchanges of one code exactly one succeeds; the rest get 40163."""
        issued = await login(client)
        bodies = await asyncio.gather(*(exchange(client, issued["code"]) for _ in range(10)))
        assert sum("openid" in body for body in bodies) == 1
        assert sorted(body.get("errcode", 0) for body in bodies) == [0] + [40163] * 9


class TestExpiry:
    async def test_expired_code_is_invalid(self, make_client):
        """A code older than SANDBOX_CODE_TTL answers 40029, and a failed exchange does not spend it."""
        clock = Clock()
        client = await make_client(sandbox_code_ttl=0.05, clock=clock)
        issued = await login(client)
        clock.now += 0.1
        assert_errcode(await exchange(client, issued["code"]), 40029, "invalid code")
        assert (await (await client.get(f"/sandbox/codes/{issued['code']}")).json())["exchanged"] == 0

    async def test_old_codes_are_purged_when_issuing(self, make_client):
        """Codes older than twice the TTL are forgotten the next time a code is issued."""
        clock = Clock()
        client = await make_client(sandbox_code_ttl=0.02, clock=clock)
        old = await login(client)
        clock.now += 0.06
        await login(client)
        resp = await client.get(f"/sandbox/codes/{old['code']}")
        assert resp.status == 404
        assert_errcode(await exchange(client, old["code"]), 40029, "invalid code")


class TestRateLimit:
    async def test_45011_over_the_per_user_limit(self, make_client):
        """A user's call beyond SANDBOX_USER_RATE_LIMIT within a minute gets 45011 and keeps its code."""
        client = await make_client(sandbox_user_rate_limit=2)
        codes = [(await login(client, openid="oBusy"))["code"] for _ in range(3)]
        await exchange(client, codes[0])
        await exchange(client, codes[1])
        body = await exchange(client, codes[2])
        assert_errcode(body, 45011, "api minute-quota reach limit mustslower retry next minute")
        assert (await (await client.get(f"/sandbox/codes/{codes[2]}")).json())["exchanged"] == 0

    async def test_limit_is_per_user(self, make_client):
        """Another user's calls are not limited by a busy user's quota."""
        client = await make_client(sandbox_user_rate_limit=1)
        await exchange(client, (await login(client, openid="oBusy"))["code"])
        body = await exchange(client, (await login(client, openid="oCalm"))["code"])
        assert body["openid"] == "oCalm"

    def test_window_slides(self):
        """A refused call succeeds once the earlier calls are more than 60 seconds old."""
        clock = Clock(1000.0)
        state = SandboxState(SandboxConfig(sandbox_apps=f"{APPID}:{SECRET}", sandbox_user_rate_limit=1), clock=clock)
        first, second = state.issue_code(APPID, "oUser"), state.issue_code(APPID, "oUser")
        args = {"appid": APPID, "secret": SECRET, "grant_type": "authorization_code"}
        state.exchange(js_code=first.code, **args)
        clock.now += 59
        with pytest.raises(WeChatError) as refused:
            state.exchange(js_code=second.code, **args)
        assert refused.value.errcode == 45011
        clock.now += 2
        assert state.exchange(js_code=second.code, **args)["openid"] == "oUser"


class TestFaults:
    async def test_errcode_fault_twice_then_success(self, client):
        """Two queued -1 faults answer "system error" without spending the code; the third call succeeds."""
        issued = await login(client)
        assert await post_json(client, "/sandbox/faults", {"count": 2, "errcode": -1}) == {"queued": 2}
        assert_errcode(await exchange(client, issued["code"]), -1, "system error")
        assert_errcode(await exchange(client, issued["code"]), -1, "system error")
        assert (await exchange(client, issued["code"]))["openid"] == issued["openid"]
        code_info = await (await client.get(f"/sandbox/codes/{issued['code']}")).json()
        assert (code_info["presented"], code_info["exchanged"]) == (3, 1)

    async def test_default_fault_is_system_error(self, client):
        """An empty fault body queues one WeChat -1 "system error"."""
        assert await post_json(client, "/sandbox/faults", {}) == {"queued": 1}
        assert_errcode(await exchange(client, "anything"), -1, "system error")

    async def test_custom_errcode_and_message(self, client):
        """A fault answers the errcode and errmsg it was given, even for a valid code."""
        issued = await login(client)
        await post_json(client, "/sandbox/faults", {"errcode": 40226, "errmsg": "code blocked"})
        assert_errcode(await exchange(client, issued["code"]), 40226, "code blocked")

    async def test_http_500(self, client):
        """An http_status fault answers that status with a non-JSON body and leaves the code usable."""
        issued = await login(client)
        await post_json(client, "/sandbox/faults", {"http_status": 500})
        resp = await client.get("/sns/jscode2session", params={"js_code": issued["code"]})
        assert resp.status == 500
        assert resp.content_type == "text/html"
        assert (await exchange(client, issued["code"]))["openid"] == issued["openid"]

    async def test_latency_then_normal_answer(self, client):
        """A latency-only fault delays the answer, then the call proceeds and spends the code."""
        issued = await login(client)
        await post_json(client, "/sandbox/faults", {"latency_ms": 200})
        started = time.monotonic()
        body = await exchange(client, issued["code"])
        assert time.monotonic() - started >= 0.19
        assert body["openid"] == issued["openid"]

    async def test_latency_with_errcode(self, client):
        """Latency is served before a fault's error answer."""
        await post_json(client, "/sandbox/faults", {"latency_ms": 100, "errcode": -1})
        started = time.monotonic()
        assert_errcode(await exchange(client, "x"), -1, "system error")
        assert time.monotonic() - started >= 0.09

    async def test_faults_queue_fifo(self, client):
        """Each queued entry serves its count, in order, before the next one starts."""
        await post_json(client, "/sandbox/faults", {"count": 2, "errcode": 45011})
        assert await post_json(client, "/sandbox/faults", {"http_status": 502}) == {"queued": 3}
        assert (await exchange(client, "x"))["errcode"] == 45011
        assert (await exchange(client, "x"))["errcode"] == 45011
        assert (await client.get("/sns/jscode2session")).status == 502
        assert_errcode(await exchange(client, "x"), 40029, "invalid code")

    async def test_delete_clears_faults(self, client):
        """DELETE /sandbox/faults drops every pending fault."""
        await post_json(client, "/sandbox/faults", {"count": 5})
        resp = await client.delete("/sandbox/faults")
        assert await resp.json() == {"queued": 0}
        assert_errcode(await exchange(client, "x"), 40029, "invalid code")

    @pytest.mark.parametrize(
        "body",
        [{"count": 0}, {"http_status": 200}, {"http_status": 500, "errcode": -1}, {"status": 500}, [1]],
    )
    async def test_bad_fault_is_rejected(self, client, body):
        """An invalid fault is refused with 47001 and queues nothing."""
        answer = await post_json(client, "/sandbox/faults", body, status=400)
        assert answer["errcode"] == 47001
        assert await (await client.delete("/sandbox/faults")).json() == {"queued": 0}
        assert (await (await client.get("/sandbox/stats")).json())["faults_served"] == 0


class TestCodesAndStats:
    async def test_counters(self, client):
        """Stats count calls, issued and exchanged codes, codes seen twice, and faults served."""
        first, second = await login(client), await login(client)
        await login(client)
        await exchange(client, first["code"])
        await exchange(client, first["code"])
        await post_json(client, "/sandbox/faults", {})
        await exchange(client, second["code"])
        await exchange(client, second["code"])
        await exchange(client, "unknown")
        stats = await (await client.get("/sandbox/stats")).json()
        assert stats == {
            "jscode2session_calls": 5,
            "codes_issued": 3,
            "codes_exchanged": 2,
            "codes_presented_more_than_once": 2,
            "faults_served": 1,
            "stable_token_calls": {},
            "getuserphonenumber_calls": 0,
            "phone_codes_issued": 0,
            "phone_codes_exchanged": 0,
            "msg_sec_check_calls": 0,
            "media_check_calls": 0,
            "media_pushes_sent": 0,
            "media_pushes_failed": 0,
            "media_downloads_failed": 0,
        }

    async def test_code_view(self, client):
        """A code's view shows who it was issued to and how often it was presented and exchanged."""
        issued = await login(client, openid="oViewed", unionid="uViewed")
        await exchange(client, issued["code"])
        await exchange(client, issued["code"])
        resp = await client.get(f"/sandbox/codes/{issued['code']}")
        assert await resp.json() == {
            "code": issued["code"],
            "appid": APPID,
            "openid": "oViewed",
            "unionid": "uViewed",
            "presented": 2,
            "exchanged": 1,
        }

    async def test_unknown_code_is_404(self, client):
        """An unknown code has no view."""
        resp = await client.get("/sandbox/codes/nope")
        assert resp.status == 404
        assert (await resp.json())["errcode"] == 40029


class TestApps:
    async def test_register_app(self, client):
        """A registered app can log users in and exchange their codes."""
        assert await post_json(client, "/sandbox/apps", {"appid": "wxnew", "secret": "newsecret"}) == {"appid": "wxnew"}
        issued = await login(client, appid="wxnew")
        assert (await exchange(client, issued["code"], appid="wxnew", secret="newsecret"))["openid"]

    async def test_update_secret(self, client):
        """Registering a known appid again replaces its secret."""
        await post_json(client, "/sandbox/apps", {"appid": APPID, "secret": "rotated"})
        issued = await login(client)
        assert_errcode(await exchange(client, issued["code"]), 40125, "invalid appsecret")
        assert (await exchange(client, issued["code"], secret="rotated"))["openid"] == issued["openid"]

    @pytest.mark.parametrize("body", [{"appid": "wx"}, {"appid": "", "secret": "x"}, {"appid": 1, "secret": "x"}])
    async def test_bad_app_is_rejected(self, client, body):
        """An app without a non-empty appid and secret is refused with 47001."""
        assert (await post_json(client, "/sandbox/apps", body, status=400))["errcode"] == 47001

    def test_malformed_sandbox_apps(self):
        """A SANDBOX_APPS entry that is not appid:secret is a configuration error."""
        with pytest.raises(ConfigError, match="SANDBOX_APPS"):
            create_app(SandboxConfig(sandbox_apps="wxgood:secret,wxbad"))


class TestLogin:
    async def test_unknown_appid(self, client):
        """wx.login for an unregistered app is refused with 40013."""
        body = await post_json(client, "/sandbox/login", {"appid": "wxunknown"}, status=400)
        assert body == {"errcode": 40013, "errmsg": "invalid appid"}

    async def test_bad_json(self, client):
        """A body that is not JSON gets 47001, not a traceback."""
        resp = await client.post("/sandbox/login", data=b"{not json")
        assert resp.status == 400
        body = await resp.json()
        assert body["errcode"] == 47001
        assert body["errmsg"].startswith("data format error")

    async def test_wrong_types(self, client):
        """A well-formed body with the wrong shape also gets 47001."""
        assert (await post_json(client, "/sandbox/login", {"appid": APPID, "openid": 7}, status=400))[
            "errcode"
        ] == 47001

    async def test_healthz(self, client):
        """The health check answers ok."""
        assert await (await client.get("/healthz")).json() == {"status": "ok"}


async def _run_module(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.wechat_sandbox",
        cwd=REPO_ROOT,
        env={**os.environ, "LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


class TestProcess:
    async def test_serves_and_stops_on_sigterm(self):
        """python -m services.wechat_sandbox serves a login and exchange, then exits 0 on SIGTERM."""
        port = free_port()
        proc = await _run_module({"WECHAT_SANDBOX_PORT": str(port), "SANDBOX_APPS": f"{APPID}:{SECRET}"})
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    try:
                        async with session.get(f"{base}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
                else:
                    pytest.fail("sandbox did not become healthy")
                async with session.post(f"{base}/sandbox/login", json={"appid": APPID}) as resp:
                    issued = await resp.json()
                params = {
                    "appid": APPID,
                    "secret": SECRET,
                    "js_code": issued["code"],
                    "grant_type": "authorization_code",
                }
                async with session.get(f"{base}/sns/jscode2session", params=params) as resp:
                    assert (await resp.json())["openid"] == issued["openid"]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0, stderr.decode()
        lines = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
        assert lines and all(line["service"] == "wechat-sandbox" for line in lines)

    async def test_bad_environment_exits_2(self):
        """A malformed environment is reported on stderr and the process exits 2."""
        proc = await _run_module({"WECHAT_SANDBOX_PORT": "not-a-port"})
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 2
        assert b"WECHAT_SANDBOX_PORT" in stderr

    async def test_port_in_use_exits_1_naming_the_variable(self):
        """A port another process holds ends the start with one line naming the variable to change, no traceback
        (the gateway and the user store start through the same ``shared.runtime.serve``)."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            proc = await _run_module({"WECHAT_SANDBOX_PORT": str(port)})
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 1
        expected = f"wechat-sandbox: cannot listen on 127.0.0.1:{port}, it is in use: set WECHAT_SANDBOX_PORT"
        assert expected.encode() in stderr
        assert b"Traceback" not in stderr
