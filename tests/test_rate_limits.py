"""Rate limits: the limiter against the real Redis, and each limit over HTTP through a stack with low limits.

The stack trusts 127.0.0.1 as a proxy, so each test speaks from addresses of its own (``X-Forwarded-For``) and
the per-IP budgets of one test never reach another's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from services.ports import free_ports
from shared.errors import RateLimited, Unavailable
from shared.keys import Keys
from shared.ratelimit import Limit, RateLimiter, client_ip, parse_networks, short_hash
from tests.account_helpers import ENVELOPE_KEYS, bearer, other_org_app
from tests.conftest import _stack_fixture
from tests.oauth_helpers import basic, stack_login
from tests.stack import ROOT, Stack

limited_stack = _stack_fixture(
    "limited_stack",
    INTERNAL_TOKEN=secrets.token_urlsafe(24),
    TRUSTED_PROXIES="127.0.0.1/32, ::1",
    RATE_LIMIT_TOKEN_PER_IP="6",
    RATE_LIMIT_PER_CODE="3",
    RATE_LIMIT_CLIENT_FAILURES="4",
    RATE_LIMIT_AUTH_FAILURES_PER_IP="5",
    RATE_LIMIT_BAD_TOKENS_PER_IP="4",
    RATE_LIMIT_USER_UPDATES="3",
    RATE_LIMIT_PER_WECHAT_USER="3",
)


def new_ip() -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + secrets.randbelow(1 << 24)))


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": f"198.51.100.7, {ip}"}  # the left hop is what a client could forge


async def post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any], str | None]:
    async with session.post(url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")


def no_code(stack: Stack) -> dict[str, str]:
    """A token request the endpoint answers 400 (no code): counted per IP, never a failed authentication."""
    return {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"]}


# --- the limiter, against the real Redis ---------------------------------------------------------------------


async def test_burst_then_refused(redis_client, key_prefix):
    """A limit of 3 per minute allows a burst of 3, then raises RateLimited with a Retry-After of seconds."""
    limiter = RateLimiter(redis_client, Keys(key_prefix))
    limit = Limit("unit", 3, 60)
    for _ in range(3):
        await limiter.check(limit, "k")
    with pytest.raises(RateLimited) as info:
        await limiter.check(limit, "k")
    assert info.value.status == 429 and 1 <= (info.value.retry_after or 0) <= 20
    await limiter.check(limit, "other-key")


async def test_peek_spends_nothing(redis_client, key_prefix):
    """``peek`` never spends budget; it refuses once ``check`` has spent it all."""
    limiter = RateLimiter(redis_client, Keys(key_prefix))
    limit = Limit("unit", 2, 60)
    for _ in range(10):
        await limiter.peek(limit, "k")
    await limiter.check(limit, "k")
    await limiter.check(limit, "k")
    with pytest.raises(RateLimited):
        await limiter.peek(limit, "k")


async def test_budget_shared_between_clients_and_keys_hashed(redis_client, redis_url, key_prefix):
    """Two limiters (two processes' clients) on one Redis share a key's budget; Redis holds only its hash."""
    other = aioredis.Redis.from_url(redis_url)
    try:
        a, b = RateLimiter(redis_client, Keys(key_prefix)), RateLimiter(other, Keys(key_prefix))
        limit = Limit("shared", 2, 60)
        await a.check(limit, "203.0.113.9")
        await b.check(limit, "203.0.113.9")
        with pytest.raises(RateLimited):
            await a.check(limit, "203.0.113.9")
        names = [key.decode() async for key in redis_client.scan_iter(match=f"{key_prefix}:ratelimit:*")]
        assert names == [f"{key_prefix}:ratelimit:shared:{short_hash('203.0.113.9')}"]
    finally:
        await other.aclose()


async def test_redis_outage_fails_open_or_closed_per_limit(key_prefix):
    """With Redis unreachable, a fail-open limit lets requests through; a fail-closed one answers 503; a peek
    never refuses."""
    (port,) = free_ports(1)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    try:
        limiter = RateLimiter(dead, Keys(key_prefix))
        await limiter.check(Limit("open", 1, 60), "k")
        await limiter.check(Limit("open", 1, 60), "k")
        await limiter.peek(Limit("closed", 1, 60, fail_open=False), "k")
        with pytest.raises(Unavailable):
            await limiter.check(Limit("closed", 1, 60, fail_open=False), "k")
    finally:
        await dead.aclose()


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.1", "10.9.9.9", "203.0.113.1"),  # an untrusted peer's header is ignored
        ("127.0.0.1", "198.51.100.7, 10.1.2.3", "10.1.2.3"),  # right-most untrusted hop
        ("127.0.0.1", "10.1.2.3, 127.0.0.1", "10.1.2.3"),  # trusted hops are skipped
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),  # all trusted: the left-most
    ],
)
def test_client_ip(remote, forwarded, expected):
    """X-Forwarded-For is believed only from TRUSTED_PROXIES; the client is the right-most untrusted hop."""
    assert client_ip(remote, forwarded, parse_networks("127.0.0.1/32,::1")) == expected


# --- each limit over HTTP --------------------------------------------------------------------------------------


async def test_token_endpoint_per_ip(session, limited_stack):
    """The 7th token request of one IP in a minute answers 429 with Retry-After in OAuth's error shape; another
    IP is unaffected, and the forged left hop of X-Forwarded-For does not decide."""
    ip = new_ip()
    for _ in range(6):
        status, _body, _ = await post(
            session, limited_stack.token_url, data=no_code(limited_stack), headers=from_ip(ip)
        )
        assert status == 400
    status, body, retry = await post(session, limited_stack.token_url, data=no_code(limited_stack), headers=from_ip(ip))
    print("7th request:", status, body, "Retry-After:", retry)
    assert status == 429 and body["error"] == "temporarily_unavailable" and "token_ip" in body["error_description"]
    assert retry is not None and int(retry) >= 1
    status, _body, _ = await post(
        session, limited_stack.token_url, data=no_code(limited_stack), headers=from_ip(new_ip())
    )
    assert status == 400


async def test_campaign_of_one_application_is_not_throttled(session, limited_stack):
    """Many users on many IPs logging in to one client_id at once all get tokens: no limit is per application."""

    async def one() -> int:
        body = {"appid": limited_stack.demo["wechatAppId"], "openid": f"o-{secrets.token_hex(6)}"}
        async with session.post(limited_stack.sandbox + "/sandbox/login", json=body) as resp:
            code = (await resp.json())["code"]
        form = {"tag": "wechat_miniprogram", "client_id": limited_stack.demo["clientId"], "code": code}
        async with session.post(limited_stack.token_url, data=form, headers=from_ip(new_ip())) as resp:
            return int(resp.status)

    statuses = await asyncio.gather(*(one() for _ in range(30)))
    print("campaign statuses:", sorted(set(statuses)))
    assert set(statuses) == {200}


async def test_code_replays_limited(session, limited_stack):
    """One wx.login() code may be tried 3 times (each from a different IP); the 4th answers 429."""
    body = {"appid": limited_stack.demo["wechatAppId"], "openid": f"o-{secrets.token_hex(6)}"}
    async with session.post(limited_stack.sandbox + "/sandbox/login", json=body) as resp:
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": limited_stack.demo["clientId"], "code": code}
    statuses = [
        (await post(session, limited_stack.token_url, data=form, headers=from_ip(new_ip())))[0] for _ in range(4)
    ]
    print("same code 4 times:", statuses)
    assert statuses[0] == 200 and 429 not in statuses[:3] and statuses[3] == 429


async def test_logins_per_wechat_user(session, limited_stack):
    """One WeChat user's 4th login in a minute (fresh codes, new IPs) answers 429 with Retry-After, counted by the
    auth worker after jscode2session; another user is unaffected."""
    openid = f"o-{secrets.token_hex(6)}"
    results = []
    for _ in range(4):
        body = {"appid": limited_stack.demo["wechatAppId"], "openid": openid}
        async with session.post(limited_stack.sandbox + "/sandbox/login", json=body) as resp:
            code = (await resp.json())["code"]
        form = {"tag": "wechat_miniprogram", "client_id": limited_stack.demo["clientId"], "code": code}
        results.append(await post(session, limited_stack.token_url, data=form, headers=from_ip(new_ip())))
    print("same WeChat user 4 times:", [(status, retry) for status, _body, retry in results])
    assert [status for status, _body, _retry in results] == [200, 200, 200, 429]
    assert results[3][2] is not None and "wechat_user" in results[3][1]["error_description"]
    await stack_login(session, limited_stack, f"o-{secrets.token_hex(6)}")


async def test_unknown_client_ids_per_ip(session, limited_stack):
    """Random client_ids from one IP: 5 answer 401, then 429 without asking the user store."""
    ip = new_ip()
    statuses: list[int] = []
    last: dict[str, Any] = {}
    for _ in range(6):
        form = {"tag": "wechat_miniprogram", "client_id": secrets.token_hex(10), "code": secrets.token_hex(8)}
        status, last, _ = await post(session, limited_stack.token_url, data=form, headers=from_ip(ip))
        statuses.append(status)
    print("random client_ids:", statuses)
    assert statuses == [401] * 5 + [429] and "client_auth_failures_ip" in last["error_description"]


async def test_wrong_secrets_per_client(session, limited_stack):
    """Wrong secrets for one client, each from a new IP: 4 answer 401, the 5th 429; the right secret still works."""
    app = other_org_app(limited_stack, f"org-{secrets.token_hex(4)}")
    url = limited_stack.gateway + "/api/login/oauth/introspect"
    statuses = []
    for _ in range(5):
        auth = basic(app["clientId"], "x" * 40)
        status, _body, _ = await post(session, url, data={"token": "t"}, headers={**auth, **from_ip(new_ip())})
        statuses.append(status)
    print("wrong secrets:", statuses)
    assert statuses == [401] * 4 + [429]
    auth = basic(app["clientId"], app["clientSecret"])
    status, body, _ = await post(session, url, data={"token": "t"}, headers={**auth, **from_ip(new_ip())})
    assert status == 200 and body == {"active": False}


async def test_wrong_secrets_on_the_refresh_endpoint(session, limited_stack):
    """/api/login/oauth/refresh_token counts wrong secrets like the token endpoint's refresh grant: 4 answer 401,
    the 5th 429."""
    app = other_org_app(limited_stack, f"org-{secrets.token_hex(4)}")
    async with aiohttp.ClientSession(headers=from_ip(new_ip())) as own_ip:
        refresh_token = (await stack_login(own_ip, limited_stack, f"o-{secrets.token_hex(6)}"))["refresh_token"]
    url = limited_stack.gateway + "/api/login/oauth/refresh_token"
    # A signed refresh token: the secret is checked before the token's row.
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": app["clientId"]}
    form["client_secret"] = "x" * 40
    statuses = [(await post(session, url, data=form, headers=from_ip(new_ip())))[0] for _ in range(5)]
    print("wrong secrets, refresh endpoint:", statuses)
    assert statuses == [401] * 4 + [429]


async def test_bearer_on_a_route_without_tokens_is_not_limited(session, limited_stack):
    """An IP over its bad-token budget is refused on the account routes only: the JWKS does not read tokens."""
    ip = new_ip()
    for _ in range(5):
        headers = {**bearer(f"forged.{secrets.token_hex(8)}.token"), **from_ip(ip)}
        async with session.get(limited_stack.gateway + "/api/get-account", headers=headers) as resp:
            last = resp.status
    assert last == 429
    async with session.get(limited_stack.gateway + "/.well-known/jwks", headers=headers) as resp:
        assert resp.status == 200


async def test_forged_bearer_tokens_per_ip(session, limited_stack):
    """Forged bearer tokens from one IP: 4 answer 401, then 429 in Casdoor's envelope."""
    ip = new_ip()
    statuses, body = [], {}
    for _ in range(5):
        headers = {**bearer(f"forged.{secrets.token_hex(8)}.token"), **from_ip(ip)}
        async with session.get(limited_stack.gateway + "/api/get-account", headers=headers) as resp:
            statuses.append(resp.status)
            body = await resp.json(content_type=None)
    print("forged tokens:", statuses, body)
    assert statuses == [401] * 4 + [429] and set(body) == ENVELOPE_KEYS and body["status"] == "error"


async def test_profile_changes_per_user(session, limited_stack):
    """A user's 4th profile change in a minute answers 429, whatever its IP."""
    user = await stack_login(session, limited_stack, f"o-{secrets.token_hex(6)}")
    statuses = []
    for i in range(4):
        headers = {**bearer(user["access_token"]), **from_ip(new_ip())}
        async with session.post(
            limited_stack.gateway + "/api/update-user", json={"displayName": f"n{i}"}, headers=headers
        ) as resp:
            statuses.append(resp.status)
    print("profile changes:", statuses)
    assert statuses == [200, 200, 200, 429]


async def test_metric_and_log_line(session, limited_stack):
    """Each refusal counts in minidoor_gateway_rate_limited_total{limit} and logs ``rate_limited`` with a hash of
    the key, never the IP itself."""
    ip = new_ip()
    for _ in range(7):
        await post(session, limited_stack.token_url, data=no_code(limited_stack), headers=from_ip(ip))
    scraper = {"Authorization": f"Bearer {limited_stack.env['INTERNAL_TOKEN']}"}
    async with session.get(limited_stack.gateway + "/metrics", headers=scraper) as resp:
        text = await resp.text()
    assert 'minidoor_gateway_rate_limited_total{limit="token_ip"}' in text
    lines = [json.loads(line) for line in limited_stack.log_path.read_text().splitlines() if '"rate_limited"' in line]
    assert any(line.get("key") == short_hash(ip) for line in lines)
    assert ip not in limited_stack.log_path.read_text()


@pytest.fixture
def second_gateway(limited_stack: Stack) -> Iterator[str]:
    """Another gateway process on the same Redis and user store: a second replica."""
    (port,) = free_ports(1)
    env = {
        **limited_stack.env,
        "GATEWAY_PORT": str(port),
        "USER_STORE_URL": f"http://127.0.0.1:{limited_stack.user_store_port}",
        "ISSUER": limited_stack.gateway,
    }
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "second gateway did not start"
                time.sleep(0.1)  # polling for readiness, not ordering events
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_limit_shared_between_gateways(session, limited_stack, second_gateway):
    """3 requests to each of two gateway processes spend one IP's budget of 6: the next answers 429 on both."""
    ip = new_ip()
    urls = [limited_stack.token_url, second_gateway + "/api/login/oauth/access_token"]
    for url in urls * 3:
        assert (await post(session, url, data=no_code(limited_stack), headers=from_ip(ip)))[0] == 400
    statuses = [(await post(session, url, data=no_code(limited_stack), headers=from_ip(ip)))[0] for url in urls]
    print("after 6 across two gateways:", statuses)
    assert statuses == [429, 429]
