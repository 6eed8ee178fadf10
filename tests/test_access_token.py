"""WeChat's access token: the sandbox's stable_token and getuserphonenumber as reference §2b/§3a describe them, and
the workers' one cluster-wide token per AppID (``auth_worker/access_token.py``) against it, through a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from auth_worker.access_token import AccessTokens, TokenRejected
from auth_worker.wechat import WechatConfigError, WechatUnavailable
from services.wechat_sandbox.app import SANDBOX, SandboxState, create_app
from shared.config import SandboxConfig
from shared.redis_keys import RedisKeys
from shared.streamseal import stream_seal
from tests.conftest import Clock

APPID = "wx0123456789abcdef"
SECRET = "s3cret-s3cret"
OTHER_APPID = "wxfedcba9876543210"
OTHER_SECRET = "other-secret"

Client = TestClient[Any, Any]


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock(now=1000.0)


@pytest.fixture(name="sandbox")
async def _sandbox(clock: Clock) -> AsyncIterator[Client]:
    config = SandboxConfig(sandbox_apps=f"{APPID}:{SECRET},{OTHER_APPID}:{OTHER_SECRET}")
    app = create_app(config)
    app[SANDBOX] = SandboxState(config, clock=clock)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def stable_token(sandbox: Client, **overrides: Any) -> dict[str, Any]:
    body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, **overrides}
    resp = await sandbox.post("/cgi-bin/stable_token", json={k: v for k, v in body.items() if v is not None})
    assert resp.status == 200
    result: dict[str, Any] = await resp.json()
    return result


async def phone_code(sandbox: Client, phone: str = "13800138000", appid: str = APPID, **extra: str) -> str:
    resp = await sandbox.post("/sandbox/phone-code", json={"appid": appid, "phoneNumber": phone, **extra})
    assert resp.status == 200, await resp.text()
    code: str = (await resp.json())["code"]
    return code


async def phone_number(sandbox: Client, token: str, code: str) -> dict[str, Any]:
    resp = await sandbox.post("/wxa/business/getuserphonenumber", params={"access_token": token}, json={"code": code})
    assert resp.status == 200
    result: dict[str, Any] = await resp.json()
    return result


async def stats(sandbox: Client) -> dict[str, Any]:
    result: dict[str, Any] = await (await sandbox.get("/sandbox/stats")).json()
    return result


class TestSandboxStableToken:
    async def test_same_token_while_more_than_five_minutes_remain(self, sandbox, clock):
        """Normal mode answers one token with its remaining life, 7,200 s at first."""
        first = await stable_token(sandbox)
        assert first["expires_in"] == 7200 and len(first["access_token"]) >= 100
        clock.now += 7200 - 301
        again = await stable_token(sandbox)
        assert again == {"access_token": first["access_token"], "expires_in": 301}

    async def test_rotation_keeps_the_old_token_for_its_last_minutes(self, sandbox, clock):
        """Under 5 minutes left, normal mode hands out the next token; the old one works until its own expiry."""
        old = (await stable_token(sandbox))["access_token"]
        clock.now += 7200 - 300
        new = await stable_token(sandbox)
        assert new["access_token"] != old and new["expires_in"] == 7200
        code = await phone_code(sandbox)
        assert (await phone_number(sandbox, old, code))["errcode"] == 0
        clock.now += 300
        answer = await phone_number(sandbox, old, await phone_code(sandbox))
        assert answer["errcode"] == 42001
        assert (await phone_number(sandbox, new["access_token"], await phone_code(sandbox)))["errcode"] == 0

    async def test_force_refresh_invalidates_the_old_token_once_per_30_s(self, sandbox, clock):
        old = (await stable_token(sandbox))["access_token"]
        forced = (await stable_token(sandbox, force_refresh=True))["access_token"]
        assert forced != old
        assert (await phone_number(sandbox, old, await phone_code(sandbox)))["errcode"] == 40001
        clock.now += 29
        assert (await stable_token(sandbox, force_refresh=True))["access_token"] == forced
        clock.now += 1
        assert (await stable_token(sandbox, force_refresh=True))["access_token"] != forced

    @pytest.mark.parametrize(
        ("overrides", "errcode"),
        [
            ({"appid": "wxunknown"}, 40013),
            ({"secret": "wrong"}, 40125),
            ({"grant_type": "authorization_code"}, 40002),
            ({"appid": None}, 41002),
            ({"secret": None}, 41004),
        ],
    )
    async def test_errors(self, sandbox, overrides, errcode):
        answer = await stable_token(sandbox, **overrides)
        assert answer["errcode"] == errcode and "access_token" not in answer

    async def test_get_is_43002(self, sandbox):
        resp = await sandbox.get("/cgi-bin/stable_token")
        assert (await resp.json())["errcode"] == 43002

    async def test_calls_are_counted_per_appid(self, sandbox):
        await stable_token(sandbox)
        await stable_token(sandbox)
        await stable_token(sandbox, appid=OTHER_APPID, secret=OTHER_SECRET)
        assert (await stats(sandbox))["stable_token_calls"] == {APPID: 2, OTHER_APPID: 1}


class TestSandboxPhoneNumber:
    async def test_answer_is_wechats_json_and_the_code_works_once(self, sandbox):
        token = (await stable_token(sandbox))["access_token"]
        code = await phone_code(sandbox, "13800138000")
        answer = await phone_number(sandbox, token, code)
        assert answer["errcode"] == 0 and answer["errmsg"] == "ok"
        info = answer["phone_info"]
        assert info["phoneNumber"] == info["purePhoneNumber"] == "13800138000"
        assert info["countryCode"] == 86 and info["watermark"]["appid"] == APPID
        assert (await phone_number(sandbox, token, code))["errcode"] == 40029

    async def test_foreign_number_has_its_country_code(self, sandbox):
        token = (await stable_token(sandbox))["access_token"]
        info = (await phone_number(sandbox, token, await phone_code(sandbox, "2025550123", countryCode="1")))[
            "phone_info"
        ]
        assert (info["phoneNumber"], info["purePhoneNumber"], info["countryCode"]) == ("+12025550123", "2025550123", 1)

    async def test_errors(self, sandbox):
        token = (await stable_token(sandbox))["access_token"]
        other = (await stable_token(sandbox, appid=OTHER_APPID, secret=OTHER_SECRET))["access_token"]
        assert (await phone_number(sandbox, token, "no-such-code"))["errcode"] == 40029
        assert (await phone_number(sandbox, other, await phone_code(sandbox)))["errcode"] == 40013
        assert (await phone_number(sandbox, "not-a-token", await phone_code(sandbox)))["errcode"] == 40014

    async def test_token_faults(self, sandbox):
        """``revoke`` rejects the token and stable_token hands out a new one; ``stale`` keeps handing it out."""
        token = (await stable_token(sandbox))["access_token"]
        resp = await sandbox.post("/sandbox/faults", json={"appid": APPID, "access_token": "stale"})
        assert await resp.json() == {"rejected": 1}
        assert (await phone_number(sandbox, token, await phone_code(sandbox)))["errcode"] == 40001
        assert (await stable_token(sandbox))["access_token"] == token
        await sandbox.post("/sandbox/faults", json={"appid": APPID, "access_token": "revoke"})
        assert (await stable_token(sandbox))["access_token"] != token


# --- The workers' cluster-wide token ------------------------------------------------------------------------------


class Cluster:
    """``n`` workers' token caches: each its own Redis connection and HTTP session, all on one Redis and sandbox."""

    def __init__(self, caches: list[AccessTokens], sandbox: Client) -> None:
        self.caches = caches
        self.sandbox = sandbox

    async def get_all(self, appid: str = APPID, secret: str = SECRET) -> list[str]:
        return list(await asyncio.gather(*(cache.get(appid, secret) for cache in self.caches)))

    async def phone_all(self, *, return_exceptions: bool = False) -> list[Any]:
        """Every worker asks for a phone number at once, through ``AccessTokens.call``."""
        codes = [await phone_code(self.sandbox) for _ in self.caches]

        def use(code: str) -> Callable[[str], Awaitable[dict[str, Any]]]:
            async def call(token: str) -> dict[str, Any]:
                answer = await phone_number(self.sandbox, token, code)
                if answer["errcode"] in (40001, 40014, 42001):
                    raise TokenRejected(answer["errcode"])
                return answer

            return call

        return list(
            await asyncio.gather(
                *(cache.call(APPID, SECRET, use(code)) for cache, code in zip(self.caches, codes, strict=True)),
                return_exceptions=return_exceptions,
            )
        )

    def metric(self, name: str, **labels: str) -> float:
        return sum(cache.metrics.registry.get_sample_value(name, labels) or 0.0 for cache in self.caches)


@pytest.fixture(name="make_cluster")
async def _make_cluster(
    sandbox: Client, clock: Clock, redis_url: str, redis_client: aioredis.Redis, key_prefix: str
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    closers: list[Callable[[], Awaitable[None]]] = []

    async def make(n: int = 3, **kwargs: Any) -> Cluster:
        caches = []
        for _ in range(n):
            redis = aioredis.Redis.from_url(redis_url)
            session = aiohttp.ClientSession()
            closers.extend([redis.aclose, session.close])
            base = str(sandbox.make_url(""))
            caches.append(AccessTokens(redis, RedisKeys(key_prefix), session, base, clock=clock, **kwargs))
        return Cluster(caches, sandbox)

    clock.now = time.time()
    yield make
    for close in closers:
        await close()


class TestClusterToken:
    async def test_three_workers_at_once_cost_one_call_and_a_forced_40001_one_more(self, make_cluster, sandbox):
        """3 workers asking at once: one stable_token call, one token for all; a 40001 (the token revoked at
        WeChat) costs exactly one more call, and every worker's retry uses the new token."""
        cluster = await make_cluster(3)
        tokens = await cluster.get_all()
        assert len(set(tokens)) == 1
        assert (await stats(sandbox))["stable_token_calls"] == {APPID: 1}
        assert cluster.metric("minidoor_wechat_token_refreshes_total", mode="normal", outcome="ok") == 1
        assert cluster.metric("minidoor_wechat_token_waits_total") == 2

        resp = await sandbox.post("/sandbox/faults", json={"appid": APPID, "access_token": "revoke"})
        assert await resp.json() == {"rejected": 1}
        answers = await cluster.phone_all()
        assert [a["errcode"] for a in answers] == [0, 0, 0]
        assert (await stats(sandbox))["stable_token_calls"] == {APPID: 2}
        assert cluster.metric("minidoor_wechat_token_retries_total", errcode="40001") == 3
        new = await cluster.get_all()
        assert len(set(new)) == 1 and new[0] != tokens[0]
        assert (await stats(sandbox))["stable_token_calls"] == {APPID: 2}

    async def test_refresh_once_per_expiry(self, make_cluster, sandbox, clock):
        """Used for hours, the token costs one call per rotation (under 5 minutes left), not one per worker."""
        cluster = await make_cluster(3)
        first = await cluster.get_all()
        clock.now += 7200 - 600
        assert await cluster.get_all() == first
        clock.now += 600 - 7200  # so that each turn below moves to 299 s before the current token's expiry
        for rotation in range(1, 4):
            clock.now += 7200 - 299
            during = await cluster.get_all()  # one refreshes; the others keep the old token, valid 299 s more
            assert set(during) <= set(first) | set(await cluster.get_all())
            tokens = await cluster.get_all()
            assert len(set(tokens)) == 1 and tokens != first
            first = tokens
            assert (await stats(sandbox))["stable_token_calls"] == {APPID: 1 + rotation}
            assert [a["errcode"] for a in await cluster.phone_all()] == [0, 0, 0]

    async def test_stale_token_forces_one_refresh_per_30_s(self, make_cluster, sandbox, clock):
        """When WeChat keeps handing out the token it rejects, one worker force-refreshes (normal call, then
        force: two calls); another such rejection within 30 s is refused with 503 instead of forcing again."""
        cluster = await make_cluster(3)
        await cluster.get_all()
        await sandbox.post("/sandbox/faults", json={"appid": APPID, "access_token": "stale"})
        answers = await cluster.phone_all()
        assert [a["errcode"] for a in answers] == [0, 0, 0]
        assert (await stats(sandbox))["stable_token_calls"] == {APPID: 3}
        assert cluster.metric("minidoor_wechat_token_refreshes_total", mode="force", outcome="ok") == 1
        await sandbox.post("/sandbox/faults", json={"appid": APPID, "access_token": "stale"})
        outcomes = await cluster.phone_all(return_exceptions=True)
        assert all(isinstance(outcome, WechatUnavailable) for outcome in outcomes), outcomes
        assert cluster.metric("minidoor_wechat_token_refreshes_total", mode="force", outcome="ok") == 1

    async def test_the_cache_is_per_appid_and_sealed(self, make_cluster, sandbox, redis_client, key_prefix):
        cluster = await make_cluster(1, seal=stream_seal("k" * 32))
        one = await cluster.caches[0].get(APPID, SECRET)
        other = await cluster.caches[0].get(OTHER_APPID, OTHER_SECRET)
        assert one != other
        assert (await stats(sandbox))["stable_token_calls"] == {APPID: 1, OTHER_APPID: 1}
        stored = await redis_client.hget(RedisKeys(key_prefix).wechat_token(APPID), "token")
        assert stored is not None and one.encode() not in stored

    async def test_wrong_secret_is_a_config_error(self, make_cluster):
        cluster = await make_cluster(1)
        with pytest.raises(WechatConfigError):
            await cluster.caches[0].get(APPID, "wrong")

    async def test_a_fenced_off_refresher_does_not_overwrite(self, make_cluster, redis_client, key_prefix, sandbox):
        """A refresher whose lock expired and was taken by another cannot write its token."""
        cluster = await make_cluster(1)
        keys = RedisKeys(key_prefix)
        cache = cluster.caches[0]
        fence = await cache._lock([keys.wechat_token_lock(APPID), keys.wechat_token_fence(APPID)], [50])
        assert fence == 1
        await redis_client.delete(keys.wechat_token_lock(APPID))  # its lock expired: a stalled refresher
        newer = await cache._lock([keys.wechat_token_lock(APPID), keys.wechat_token_fence(APPID)], [10_000])
        assert newer == 2
        written = await cache._store([keys.wechat_token(APPID), keys.wechat_token_lock(APPID)], [1, b"old", 1, 1000])
        assert written == 0
        assert await redis_client.exists(keys.wechat_token(APPID)) == 0
