"""The WeChat sandbox's content security over HTTP: ``wxa/msg_sec_check``, ``wxa/media_check_async`` with its signed
message push, the ``/sandbox/push-config`` and ``/sandbox/media-verdicts`` controls, queued faults and stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.wechat_sandbox.app import create_app
from services.wechat_sandbox.sec_check import push_signature
from shared.config import SandboxConfig

APPID = "wx0123456789abcdef"
SECRET = "s3cret-s3cret"
OTHER_APPID = "wxfedcba9876543210"
PUSH_TOKEN = "PushToken0123456789"

Client = TestClient[Any, Any]


class Receiver:
    """The mini program's server: serves media for WeChat to download and takes WeChat's message pushes, checking
    their signature."""

    def __init__(self) -> None:
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.downloads: list[str] = []
        self.answer = "success"
        self.answer_status = 200
        self.server = TestServer(self._app())

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/media/{name}", self._media)
        app.router.add_post("/push", self._push)
        return app

    async def _media(self, request: web.Request) -> web.Response:
        self.downloads.append(request.match_info["name"])
        if request.match_info["name"] == "missing.png":
            raise web.HTTPNotFound()
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, content_type="image/png")

    async def _push(self, request: web.Request) -> web.Response:
        query = request.query
        signature = push_signature(PUSH_TOKEN, query["timestamp"], query["nonce"])
        await self.pushes.put(
            {
                "signed": query["signature"] == signature,
                "timestamp": query["timestamp"],
                "nonce": query["nonce"],
                "content_type": request.content_type,
                "body": await request.json(),
                "at": time.monotonic(),
            }
        )
        return web.Response(text=self.answer, status=self.answer_status)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def next_push(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.pushes.get(), timeout)


@pytest.fixture(name="sandbox")
async def _sandbox() -> AsyncIterator[Client]:
    client: Client = TestClient(TestServer(create_app(SandboxConfig(sandbox_apps=f"{APPID}:{SECRET}"))))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.server.start_server()
    yield receiver
    await receiver.server.close()


@pytest.fixture(name="token")
async def _token(sandbox: Client) -> str:
    body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    answer = await post_json(sandbox, "/cgi-bin/stable_token", body)
    token: str = answer["access_token"]
    return token


@pytest.fixture(name="pushed")
async def _pushed(sandbox: Client, receiver: Receiver) -> Receiver:
    """The sandbox knows the receiver as APPID's message-push server."""
    config = {"appid": APPID, "url": receiver.url("/push"), "token": PUSH_TOKEN}
    assert await post_json(sandbox, "/sandbox/push-config", config) == {"appid": APPID}
    return receiver


async def post_json(client: Client, path: str, data: Any, status: int = 200, **params: str) -> Any:
    resp = await client.post(path, json=data, params=params)
    body = await resp.json()
    assert resp.status == status, body
    return body


def text_body(**overrides: Any) -> dict[str, Any]:
    body = {"content": "hello 你好", "version": 2, "scene": 1, "openid": "oUser", **overrides}
    return {k: v for k, v in body.items() if v is not None}


def media_body(receiver: Receiver, name: str = "ok.png", **overrides: Any) -> dict[str, Any]:
    body = {"media_url": receiver.url(f"/media/{name}"), "media_type": 2, "version": 2, "scene": 1, "openid": "oU"}
    return {**body, **overrides}


def assert_errcode(body: dict[str, Any], errcode: int, text: str) -> None:
    assert set(body) == {"errcode", "errmsg"}, body
    assert body["errcode"] == errcode
    assert body["errmsg"].startswith(f"{text}, rid: "), body


async def stats(sandbox: Client) -> dict[str, Any]:
    result: dict[str, Any] = await (await sandbox.get("/sandbox/stats")).json()
    return result


async def settled_stats(sandbox: Client, **expected: int) -> dict[str, Any]:
    """The stats once they show ``expected`` (the sandbox reads a push's answer after the receiver has it), or
    after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        counters = await stats(sandbox)
        if all(counters[k] == v for k, v in expected.items()) or time.monotonic() > deadline:
            return counters
        await asyncio.sleep(0.02)


class TestPushSignature:
    def test_wechat_docs_vector(self):
        """The signature of WeChat's documented example is the sha1 its docs give."""
        assert push_signature("AAAAA", "1714036504", "1514711492") == "f464b24fc39322e44b38aa78f5edd27bd1441696"


class TestMsgSecCheck:
    @pytest.mark.parametrize(
        ("content", "suggest", "label"),
        [
            ("a clean nickname", "pass", 100),
            ("I am sandbox-risky here", "risky", 20001),
            ("sandbox-review", "review", 20002),
            ("sandbox-review and sandbox-risky", "risky", 20001),
        ],
    )
    async def test_verdicts(self, sandbox, token, content, suggest, label):
        """The verdict follows the marker in the content, in WeChat's v2 answer shape with a trace_id."""
        body = await post_json(sandbox, "/wxa/msg_sec_check", text_body(content=content), access_token=token)
        assert set(body) == {"errcode", "errmsg", "result", "detail", "trace_id"}
        assert (body["errcode"], body["errmsg"]) == (0, "ok")
        assert body["result"] == {"suggest": suggest, "label": label}
        assert body["detail"] == [
            {"strategy": "content_model", "errcode": 0, "suggest": suggest, "label": label, "prob": 90}
        ]
        assert len(body["trace_id"]) == 26

    async def test_trace_ids_differ_and_optional_fields_pass(self, sandbox, token):
        """Each check has its own trace_id; version "2", nickname, title and signature are accepted."""
        extra = {"version": "2", "nickname": "n", "title": "t", "signature": "s", "scene": 4}
        first = await post_json(sandbox, "/wxa/msg_sec_check", text_body(**extra), access_token=token)
        second = await post_json(sandbox, "/wxa/msg_sec_check", text_body(), access_token=token)
        assert first["trace_id"] != second["trace_id"]
        assert first["result"]["suggest"] == "pass"

    async def test_longest_content_passes(self, sandbox, token):
        """2500 characters (not bytes) are within the limit."""
        body = await post_json(sandbox, "/wxa/msg_sec_check", text_body(content="字" * 2500), access_token=token)
        assert body["errcode"] == 0

    @pytest.mark.parametrize(
        ("overrides", "errcode", "text"),
        [
            ({"version": 1}, 47001, "data format error"),
            ({"version": None}, 47001, "data format error"),
            ({"version": "v2"}, 47001, "data format error"),
            ({"openid": ""}, 40003, "invalid openid"),
            ({"openid": None}, 40003, "invalid openid"),
            ({"openid": 7}, 40003, "invalid openid"),
            ({"scene": 0}, 47001, "data format error"),
            ({"scene": 5}, 47001, "data format error"),
            ({"scene": "1"}, 47001, "data format error"),
            ({"content": ""}, 44004, "empty content"),
            ({"content": None}, 44004, "empty content"),
            ({"content": "x" * 2501}, 47001, "data format error"),
            ({"content": 12}, 47001, "data format error"),
            ({"nickname": 3}, 47001, "data format error"),
            ({"version": 1, "openid": ""}, 47001, "data format error"),
            ({"openid": "", "content": ""}, 40003, "invalid openid"),
            ({"scene": 9, "content": ""}, 47001, "data format error"),
        ],
    )
    async def test_validation_errors(self, sandbox, token, overrides, errcode, text):
        """Each malformed check gets HTTP 200 and the first failing check's errcode (version, openid, scene,
        content)."""
        body = await post_json(sandbox, "/wxa/msg_sec_check", text_body(**overrides), access_token=token)
        assert_errcode(body, errcode, text)

    @pytest.mark.parametrize("raw", [b"[1]", b"not json", b'"text"'])
    async def test_body_not_a_json_object(self, sandbox, token, raw):
        """A body that is not a JSON object is 47001."""
        resp = await sandbox.post("/wxa/msg_sec_check", data=raw, params={"access_token": token})
        assert resp.status == 200
        assert_errcode(await resp.json(), 47001, "data format error")

    async def test_token_errors(self, sandbox, token):
        """A token never issued is 40014, an expired one 42001, an invalidated one 40001; each with HTTP 200."""
        body = text_body()
        assert_errcode(await post_json(sandbox, "/wxa/msg_sec_check", body), 40014, "invalid access_token")
        assert_errcode(
            await post_json(sandbox, "/wxa/msg_sec_check", body, access_token="nope"), 40014, "invalid access_token"
        )
        await post_json(sandbox, "/sandbox/faults", {"appid": APPID, "access_token": "stale"})
        assert_errcode(
            await post_json(sandbox, "/wxa/msg_sec_check", body, access_token=token),
            40001,
            "invalid credential, access_token is invalid or not latest",
        )
        fresh = await post_json(
            sandbox,
            "/cgi-bin/stable_token",
            {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": True},
        )
        assert (await post_json(sandbox, "/wxa/msg_sec_check", body, access_token=fresh["access_token"]))[
            "errcode"
        ] == 0
        await post_json(sandbox, "/sandbox/clock", {"advance": 7200})
        assert_errcode(
            await post_json(sandbox, "/wxa/msg_sec_check", body, access_token=fresh["access_token"]),
            42001,
            "access_token expired",
        )

    async def test_queued_faults(self, sandbox, token):
        """A fault queued for msg_sec_check is served before the token is looked at, and only to msg_sec_check."""
        fault = {"api": "msg_sec_check", "errcode": -1, "count": 2}
        assert await post_json(sandbox, "/sandbox/faults", fault) == {"queued": 2}
        await post_json(sandbox, "/sandbox/faults", {"api": "msg_sec_check", "http_status": 503})
        assert_errcode(await post_json(sandbox, "/wxa/msg_sec_check", text_body()), -1, "system error")
        resp = await sandbox.post("/wxa/media_check_async", json={}, params={"access_token": token})
        assert_errcode(await resp.json(), 47001, "data format error")
        assert_errcode(
            await post_json(sandbox, "/wxa/msg_sec_check", text_body(), access_token=token), -1, "system error"
        )
        resp = await sandbox.post("/wxa/msg_sec_check", json=text_body(), params={"access_token": token})
        assert resp.status == 503 and resp.content_type == "text/html"
        body = await post_json(sandbox, "/wxa/msg_sec_check", text_body(), access_token=token)
        assert body["errcode"] == 0
        assert (await stats(sandbox))["faults_served"] == 3


class TestMediaCheckAsync:
    async def test_pass_is_pushed_signed(self, sandbox, token, pushed):
        """With no verdict queued: trace_id at once, then a signed wxa_media_check push (JSON) saying pass, after
        the media was downloaded."""
        answer = await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        assert set(answer) == {"errcode", "errmsg", "trace_id"}
        assert (answer["errcode"], answer["errmsg"]) == (0, "ok")
        push = await pushed.next_push()
        assert push["signed"] and push["nonce"].isdigit() and push["content_type"] == "application/json"
        assert abs(int(push["timestamp"]) - time.time()) < 5
        event = push["body"]
        assert abs(event.pop("CreateTime") - time.time()) < 5
        assert event == {
            "ToUserName": "gh_sandbox",
            "FromUserName": "sandbox",
            "MsgType": "event",
            "Event": "wxa_media_check",
            "appid": APPID,
            "trace_id": answer["trace_id"],
            "version": 2,
            "detail": [{"strategy": "content_model", "errcode": 0, "suggest": "pass", "label": 100, "prob": 90}],
            "errcode": 0,
            "errmsg": "ok",
            "result": {"suggest": "pass", "label": 100},
        }
        assert pushed.downloads == ["ok.png"]

    async def test_queued_verdicts_in_order_with_their_delay(self, sandbox, token, pushed):
        """Queued verdicts are taken one per check, in order: risky (default label 20001) after its delay, then
        review with the label given, then pass again once the queue is empty."""
        await post_json(sandbox, "/sandbox/media-verdicts", {"appid": APPID, "suggest": "risky", "delay_ms": 400})
        body = {"appid": APPID, "suggest": "review", "label": 21000, "delay_ms": 0}
        assert await post_json(sandbox, "/sandbox/media-verdicts", body) == {"queued": 2}
        started = time.monotonic()
        risky = await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        assert time.monotonic() - started < 0.3
        review = await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        first, second = await pushed.next_push(), await pushed.next_push()
        assert (first["body"]["trace_id"], first["body"]["result"]) == (
            review["trace_id"],
            {"suggest": "review", "label": 21000},
        )
        assert (second["body"]["trace_id"], second["body"]["result"]) == (
            risky["trace_id"],
            {"suggest": "risky", "label": 20001},
        )
        assert second["at"] - started >= 0.4
        await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        assert (await pushed.next_push())["body"]["result"] == {"suggest": "pass", "label": 100}

    async def test_none_never_pushes(self, sandbox, token, pushed):
        """suggest "none" (count 2) is a verdict that never comes: no push for either check."""
        await post_json(sandbox, "/sandbox/media-verdicts", {"appid": APPID, "suggest": "none", "count": 2})
        for _ in range(2):
            await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        with pytest.raises(TimeoutError):
            await pushed.next_push(timeout=0.5)
        assert (await stats(sandbox))["media_pushes_sent"] == 0

    async def test_failed_download_pushes_an_error(self, sandbox, token, pushed):
        """Media answering 404 gets errcode -1008 "media download failed", suggest review, label 0."""
        answer = await post_json(
            sandbox, "/wxa/media_check_async", media_body(pushed, "missing.png"), access_token=token
        )
        event = (await pushed.next_push())["body"]
        assert event["trace_id"] == answer["trace_id"]
        assert (event["errcode"], event["errmsg"]) == (-1008, "media download failed")
        assert event["result"] == {"suggest": "review", "label": 0}
        assert (await stats(sandbox))["media_downloads_failed"] == 1

    async def test_unreachable_media_is_a_failed_download(self, sandbox, token, pushed):
        """Media on a closed port is a failed download too."""
        body = media_body(pushed, media_url="http://127.0.0.1:1/a.png")
        await post_json(sandbox, "/wxa/media_check_async", body, access_token=token)
        assert (await pushed.next_push())["body"]["errcode"] == -1008

    async def test_no_push_config_no_push(self, sandbox, token, receiver):
        """Without a message-push configuration WeChat still downloads the media but pushes nothing."""
        await post_json(sandbox, "/wxa/media_check_async", media_body(receiver), access_token=token)
        with pytest.raises(TimeoutError):
            await receiver.next_push(timeout=0.5)
        assert receiver.downloads == ["ok.png"]
        assert (await stats(sandbox))["media_pushes_sent"] == 0

    @pytest.mark.parametrize(
        ("overrides", "errcode", "text"),
        [
            ({"media_url": "ftp://example.com/a.png"}, 47001, "data format error"),
            ({"media_url": ""}, 47001, "data format error"),
            ({"media_type": 3}, 47001, "data format error"),
            ({"media_type": "2"}, 47001, "data format error"),
            ({"version": 1}, 47001, "data format error"),
            ({"openid": ""}, 40003, "invalid openid"),
            ({"scene": 0}, 47001, "data format error"),
        ],
    )
    async def test_validation_errors(self, sandbox, token, pushed, overrides, errcode, text):
        """A malformed media check is refused at once and nothing is downloaded or pushed."""
        body = media_body(pushed, **overrides)
        assert_errcode(await post_json(sandbox, "/wxa/media_check_async", body, access_token=token), errcode, text)
        await asyncio.sleep(0.1)
        assert pushed.downloads == [] and pushed.pushes.empty()

    async def test_token_error_and_fault(self, sandbox, token, pushed):
        """An unknown token is 40014; a queued media_check_async fault answers its errcode and submits nothing."""
        assert_errcode(
            await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token="x"),
            40014,
            "invalid access_token",
        )
        fault = {"api": "media_check_async", "errcode": 40003, "errmsg": "invalid openid"}
        await post_json(sandbox, "/sandbox/faults", fault)
        body = await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        assert_errcode(body, 40003, "invalid openid")
        await asyncio.sleep(0.2)
        assert pushed.pushes.empty()

    async def test_a_refused_push_is_counted(self, sandbox, token, pushed):
        """A push answered with anything but 200 "success" or an empty body counts as failed."""
        for answer, status in (("fail", 200), ("success", 500), ("", 200), ("success", 200)):
            pushed.answer, pushed.answer_status = answer, status
            await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
            await pushed.next_push()
        counters = await settled_stats(sandbox, media_pushes_failed=2)
        assert (counters["media_pushes_sent"], counters["media_pushes_failed"]) == (4, 2)

    async def test_cleanup_cancels_pending_deliveries(self, receiver):
        """Closing the sandbox cancels a delivery still waiting for its verdict's delay, at once."""
        sandbox: Client = TestClient(TestServer(create_app(SandboxConfig(sandbox_apps=f"{APPID}:{SECRET}"))))
        await sandbox.start_server()
        body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        token = (await post_json(sandbox, "/cgi-bin/stable_token", body))["access_token"]
        await post_json(sandbox, "/sandbox/push-config", {"appid": APPID, "url": receiver.url("/push"), "token": "abc"})
        await post_json(sandbox, "/sandbox/media-verdicts", {"appid": APPID, "suggest": "pass", "delay_ms": 60_000})
        await post_json(sandbox, "/wxa/media_check_async", media_body(receiver), access_token=token)
        started = time.monotonic()
        await sandbox.close()
        assert time.monotonic() - started < 2
        assert receiver.pushes.empty() and receiver.downloads == []


class TestControls:
    @pytest.mark.parametrize(
        "body",
        [
            {"appid": APPID, "url": "ftp://x", "token": PUSH_TOKEN},
            {"appid": APPID, "url": "http://x", "token": "ab"},
            {"appid": APPID, "url": "http://x", "token": "not letters!"},
            {"appid": APPID, "url": "http://x"},
            {"appid": APPID, "url": "http://x", "token": PUSH_TOKEN, "aes_key": "k"},
        ],
    )
    async def test_bad_push_config(self, sandbox, body):
        """A push configuration WeChat's console would not take is refused with 47001 (HTTP 400)."""
        assert (await post_json(sandbox, "/sandbox/push-config", body, status=400))["errcode"] == 47001

    @pytest.mark.parametrize(
        "body",
        [
            {"appid": APPID, "suggest": "maybe"},
            {"appid": APPID, "suggest": "pass", "count": 0},
            {"appid": APPID, "suggest": "pass", "delay_ms": -1},
            {"appid": APPID, "suggest": "pass", "delay": 5},
            {"suggest": "pass"},
        ],
    )
    async def test_bad_media_verdicts(self, sandbox, body):
        """A malformed verdict is refused with 47001 (HTTP 400) and queues nothing."""
        assert (await post_json(sandbox, "/sandbox/media-verdicts", body, status=400))["errcode"] == 47001
        one = await post_json(sandbox, "/sandbox/media-verdicts", {"appid": APPID, "suggest": "none"})
        assert one == {"queued": 1}

    async def test_unknown_appid(self, sandbox):
        """Both controls want an AppID the sandbox knows: 40013 (HTTP 400) otherwise."""
        config = {"appid": OTHER_APPID, "url": "http://x", "token": PUSH_TOKEN}
        assert (await post_json(sandbox, "/sandbox/push-config", config, status=400))["errcode"] == 40013
        verdict = {"appid": OTHER_APPID, "suggest": "pass"}
        assert (await post_json(sandbox, "/sandbox/media-verdicts", verdict, status=400))["errcode"] == 40013


class TestStats:
    async def test_counters(self, sandbox, token, pushed):
        """Stats count every call of each API (faulted and refused ones too), pushes sent and failed, and failed
        downloads."""
        assert {k: v for k, v in (await stats(sandbox)).items() if k.startswith("m")} == {
            "msg_sec_check_calls": 0,
            "media_check_calls": 0,
            "media_pushes_sent": 0,
            "media_pushes_failed": 0,
            "media_downloads_failed": 0,
        }
        await post_json(sandbox, "/sandbox/faults", {"api": "msg_sec_check"})
        for body in (text_body(), text_body(), text_body(openid="")):
            await post_json(sandbox, "/wxa/msg_sec_check", body, access_token=token)
        await post_json(sandbox, "/wxa/media_check_async", media_body(pushed), access_token=token)
        await pushed.next_push()
        pushed.answer = "nope"
        await post_json(sandbox, "/wxa/media_check_async", media_body(pushed, "missing.png"), access_token=token)
        await pushed.next_push()
        await post_json(sandbox, "/wxa/media_check_async", media_body(pushed, media_type=9), access_token=token)
        counters = await settled_stats(sandbox, media_pushes_failed=1)
        assert {k: counters[k] for k in counters if k.startswith("m")} == {
            "msg_sec_check_calls": 3,
            "media_check_calls": 3,
            "media_pushes_sent": 2,
            "media_pushes_failed": 1,
            "media_downloads_failed": 1,
        }
        assert counters["faults_served"] == 1 and counters["getuserphonenumber_calls"] == 0
