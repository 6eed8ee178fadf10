"""Rate limits: the limiter against the real Redis, and each limit over HTTP through a stack with low limits.

The stack trusts 127.0.0.1 as a proxy, so each test speaks from addresses of its own (``X-Forwarded-For``) and
the per-IP budgets of one test never reach another's.
"""

from __future__ import annotations

import asyncio
import hashlib
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

from gateway.app import create_app
from gateway.limits import OAUTH_CLIENT_PATHS
from gateway.views.account import ENVELOPE_PATHS
from services.ports import free_ports
from shared.audit import AuditPublisher
from shared.config import GatewayConfig, Secret
from shared.errors import RateLimited, Unavailable
from shared.guard import log_id
from shared.messages import STREAM_FIELD, audit_decoder
from shared.ratelimit import (
    PEEK_MEMO_SECONDS,
    Limit,
    Origin,
    RateLimiter,
    client_ip,
    keyed_hash,
    limiter_hash_key,
    parse_networks,
)
from shared.redis_keys import RedisKeys
from tests.account_helpers import ENVELOPE_KEYS, bearer, other_org_app
from tests.conftest import _stack_fixture
from tests.oauth_helpers import basic, claims_of, eventually, stack_login
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


HASH_KEY = limiter_hash_key("s" * 32, "")


def stack_hash_key(stack: Stack) -> bytes:
    """The key the stack's gateway and workers hash limit keys with: from the runner's generated seal key."""
    seal = stack.env.get("STREAM_SEAL_KEY") or (stack.state_dir / "stream.key").read_text().strip()
    return limiter_hash_key(seal, stack.env["INTERNAL_TOKEN"])


def no_code(stack: Stack) -> dict[str, str]:
    """A token request the endpoint answers 400 (no code): counted per IP, never a failed authentication."""
    return {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"]}


# --- the limiter, against the real Redis ---------------------------------------------------------------------


async def test_burst_then_refused(redis_client, key_prefix):
    """A limit of 3 per minute allows a burst of 3, then raises RateLimited with a Retry-After of seconds."""
    limiter = RateLimiter(redis_client, RedisKeys(key_prefix), HASH_KEY)
    limit = Limit("unit", 3, 60)
    for _ in range(3):
        await limiter.check(limit, "k")
    with pytest.raises(RateLimited) as info:
        await limiter.check(limit, "k")
    assert info.value.status == 429 and 1 <= (info.value.retry_after or 0) <= 20
    await limiter.check(limit, "other-key")


async def test_peek_spends_nothing(redis_client, key_prefix):
    """``peek`` never spends budget; it refuses once ``check`` has spent it all."""
    limiter = RateLimiter(redis_client, RedisKeys(key_prefix), HASH_KEY)
    limit = Limit("unit", 2, 60)
    for _ in range(10):
        await limiter.peek(limit, "k")
    await limiter.check(limit, "k")
    await limiter.check(limit, "k")
    with pytest.raises(RateLimited):
        await limiter.peek(limit, "k")


async def test_an_allowed_peek_stands_a_moment(redis_client, redis_url, key_prefix):
    """An allowed peek is remembered for PEEK_MEMO_SECONDS: another process's spending is seen after that at the
    latest, this process's own at once."""
    other = aioredis.Redis.from_url(redis_url)
    try:
        a, b = (
            RateLimiter(redis_client, RedisKeys(key_prefix), HASH_KEY),
            RateLimiter(other, RedisKeys(key_prefix), HASH_KEY),
        )
        limit = Limit("memo", 1, 60)
        await a.peek(limit, "k")
        await b.check(limit, "k")
        await a.peek(limit, "k")  # from memory: b's spending is not seen yet
        await asyncio.sleep(PEEK_MEMO_SECONDS + 0.05)
        with pytest.raises(RateLimited):
            await a.peek(limit, "k")
        await a.peek(limit, "fresh")
        await a.check(limit, "fresh")  # spends the last unit, and forgets the peek
        with pytest.raises(RateLimited):
            await a.peek(limit, "fresh")
    finally:
        await other.aclose()


async def test_budget_shared_between_clients_and_keys_hashed(redis_client, redis_url, key_prefix):
    """Two limiters (two processes' clients) on one Redis share a key's budget; Redis holds only its HMAC under
    the shared key: not the IP, nor its plain sha256, which anyone could compute for every IPv4 address."""
    other = aioredis.Redis.from_url(redis_url)
    try:
        a, b = (
            RateLimiter(redis_client, RedisKeys(key_prefix), HASH_KEY),
            RateLimiter(other, RedisKeys(key_prefix), HASH_KEY),
        )
        limit = Limit("shared", 2, 60)
        await a.check(limit, "203.0.113.9")
        await b.check(limit, "203.0.113.9")
        with pytest.raises(RateLimited):
            await a.check(limit, "203.0.113.9")
        names = [key.decode() async for key in redis_client.scan_iter(match=f"{key_prefix}:ratelimit:*")]
        assert names == [f"{key_prefix}:ratelimit:shared:{keyed_hash(HASH_KEY, '203.0.113.9')}"]
        assert hashlib.sha256(b"203.0.113.9").hexdigest()[:16] not in names[0] and "203.0.113.9" not in names[0]
        assert keyed_hash(limiter_hash_key("", "t" * 16), "203.0.113.9") != keyed_hash(HASH_KEY, "203.0.113.9")
    finally:
        await other.aclose()


async def test_redis_outage_fails_open_or_closed_per_limit(key_prefix):
    """With Redis unreachable, a fail-open limit lets requests through; a fail-closed one answers 503; a peek
    never refuses."""
    (port,) = free_ports(1)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    try:
        limiter = RateLimiter(dead, RedisKeys(key_prefix), HASH_KEY)
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
    assert any(line.get("key") == keyed_hash(stack_hash_key(limited_stack), ip) for line in lines)
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
        # The runner generated the replicas' shared seal key; a replica without it could not open sealed logins.
        "STREAM_SEAL_KEY": (limited_stack.state_dir / "stream.key").read_text().strip(),
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


async def test_forged_bearer_tokens_on_userinfo_and_logout(session, limited_stack):
    """Forged bearer tokens on /api/userinfo and /api/logout (in the header, the query or a form body) spend the
    per-IP bad-token budget as on the other account routes: 4 answer 401, then 429 in Casdoor's envelope."""
    ip = new_ip()
    url = limited_stack.gateway
    forged = f"forged.{secrets.token_hex(8)}.token"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/userinfo", {"headers": bearer(forged)}),
        ("POST", "/api/logout", {"data": {"access_token": forged}}),
        ("GET", "/api/logout", {"params": {"accessToken": forged}}),
        ("POST", "/api/userinfo", {"data": {"accessToken": forged}}),
        ("POST", "/api/logout", {"data": {"access_token": forged}}),
    ]
    statuses, body = [], {}
    for method, path, kwargs in calls:
        headers = {**kwargs.pop("headers", {}), **from_ip(ip)}
        async with session.request(method, url + path, headers=headers, **kwargs) as resp:
            statuses.append(resp.status)
            body = await resp.json(content_type=None)
    print("forged tokens on userinfo/logout:", statuses, body)
    assert statuses == [401] * 4 + [429] and set(body) == ENVELOPE_KEYS and "bad_tokens_ip" in body["msg"]
    # Over its budget, the address is refused before the user store is asked, even with a live token in a form.
    user = await stack_login(session, limited_stack, f"o-{secrets.token_hex(6)}")
    for path in ("/api/userinfo", "/api/logout"):
        form = {"accessToken": user["access_token"]}
        async with session.post(url + path, data=form, headers=from_ip(ip)) as resp:
            assert resp.status == 429, (path, await resp.text())


@pytest.mark.parametrize("path", ["/api/login/oauth/refresh_token", "/api/userinfo", "/api/logout"])
async def test_wrong_client_secrets_on_every_client_route(session, limited_stack, path):
    """A wrong client secret counts as a failed client authentication on every route that takes client
    credentials, the refresh endpoint and the account routes included: 4 answer 4xx, the 5th 429."""
    app = other_org_app(limited_stack, f"org-{secrets.token_hex(4)}")
    refresh_token = ""
    if path.endswith("refresh_token"):
        # The secret is checked once the refresh token verifies: any live one of ours will do.
        refresh_token = (await stack_login(session, limited_stack, f"o-{secrets.token_hex(6)}"))["refresh_token"]
    statuses = []
    for _ in range(5):
        headers = {**basic(app["clientId"], "x" * 40), **from_ip(new_ip())}
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token} if refresh_token else {}
        status, _body, _ = await post(session, limited_stack.gateway + path, data=form, headers=headers)
        statuses.append(status)
    print(path, "wrong secrets:", statuses)
    assert statuses == [401] * 4 + [429]


def test_every_credential_route_counts_client_failures():
    """Every gateway route that reads client credentials is one where failed client authentications count: the
    OAuth client endpoints and all of Casdoor's account routes. A new route must be placed on one side."""
    config = GatewayConfig(internal_token=Secret("t" * 16), redis_url="redis://unused", user_store_url="http://x")
    paths = {route.resource.canonical for route in create_app(config).router.routes() if route.resource}
    without_credentials = {
        "/.well-known/jwks",
        "/.well-known/openid-configuration",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/avatars/{name}",
        "/api/wechat-push/{appid}",  # WeChat's signed message push: limited per IP
    }
    assert paths - without_credentials == OAUTH_CLIENT_PATHS | ENVELOPE_PATHS


# --- trips in the audit log --------------------------------------------------------------------------------------


async def test_trip_published_once_per_key_and_period(redis_client, key_prefix):
    """A key's first refusal under a limit publishes one ``rate_limited`` audit event carrying the origin; more
    refusals (and peeks) of that key in the period publish nothing, another key publishes its own, an allowed
    request none. An unknown client id is recorded hashed."""
    keys = RedisKeys(key_prefix)
    publisher = AuditPublisher(redis_client, keys)
    limiter = RateLimiter(redis_client, keys, HASH_KEY, audit=publisher)
    limit = Limit("unit", 2, 60)
    origin = Origin.of(client_ip="203.0.113.9", request_id="req-1", client_id="maybe-a-secret")
    for _ in range(2):
        await limiter.check(limit, "a", origin)
    for _ in range(5):
        with pytest.raises(RateLimited):
            await limiter.check(limit, "a", origin)
    with pytest.raises(RateLimited):
        await limiter.peek(limit, "a", origin)
    for _ in range(2):
        await limiter.check(limit, "b")
    with pytest.raises(RateLimited):
        await limiter.check(limit, "b")
    await publisher.close()
    entries = await redis_client.xrange(keys.audit_stream)
    events = [audit_decoder.decode(fields[STREAM_FIELD]) for _id, fields in entries]
    # One event per key; each is sent by a task of its own, so the stream's order is not the refusals' order.
    by_key = {event.details["key"]: event for event in events}
    assert len(events) == 2 and set(by_key) == {keyed_hash(HASH_KEY, "a"), keyed_hash(HASH_KEY, "b")}
    first = by_key[keyed_hash(HASH_KEY, "a")]
    assert first.action == "rate_limited" and first.outcome == "denied" and first.at > 0
    assert first.client_ip == "203.0.113.9" and first.request_id == "req-1"
    assert first.client_id == log_id("maybe-a-secret") and "maybe-a-secret" not in str(events)
    assert first.details["limit"] == "unit" and first.details["window_s"] == 60 and first.details["count"] == 2


def audit_rows(stack: Stack, **match: Any) -> list[dict[str, Any]]:
    """``make audit``'s JSON lines whose fields equal ``match``."""
    out = subprocess.run(
        [sys.executable, "-m", "services", "admin", "audit"], cwd=ROOT, env=stack.env, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return [row for row in rows if all(row.get(k) == v for k, v in match.items())]


async def wait_for_rows(stack: Stack, **match: Any) -> list[dict[str, Any]]:
    """The rows matching ``match``, once there is one (the user store drains the audit stream in batches)."""
    rows: list[dict[str, Any]] = []

    async def check() -> bool:
        rows[:] = await asyncio.to_thread(audit_rows, stack, **match)
        return bool(rows)

    await eventually(check, 20, f"audit rows {match}", interval=0.3)
    return rows


async def trip_token_ip(session: aiohttp.ClientSession, stack: Stack, ip: str, request_id: str, times: int) -> None:
    """Spend ``ip``'s 6 token requests, then send ``times`` more (refused), the first of them as ``request_id``."""
    for i in range(6 + times):
        headers = {**from_ip(ip), **({"X-Request-Id": request_id} if i == 6 else {})}
        status, _body, _ = await post(session, stack.token_url, data=no_code(stack), headers=headers)
        assert status == (400 if i < 6 else 429)


async def test_trips_are_audited_once_per_window(session, limited_stack):
    """Ten refusals of one address in a minute leave one ``rate_limited`` row in ``make audit``: the limit, its
    window, the address, the first refusal's request id and the keyed hash of the address, never the address as
    a key. The demo client_id is known to the gateway, so the row names its application."""
    ip, request_id = new_ip(), f"trip-{secrets.token_hex(4)}"
    await trip_token_ip(session, limited_stack, ip, request_id, times=10)
    # A later trip of another address: once its row is in, every earlier event of the stream is too.
    later = f"later-{secrets.token_hex(4)}"
    await trip_token_ip(session, limited_stack, new_ip(), later, times=1)
    await wait_for_rows(limited_stack, action="rate_limited", request_id=later)
    rows = audit_rows(limited_stack, action="rate_limited", client_ip=ip)
    assert len(rows) == 1, rows
    (row,) = rows
    assert row["outcome"] == "denied" and row["request_id"] == request_id
    assert row["details"]["limit"] == "token_ip" and row["details"]["window_s"] == 60
    assert row["details"]["key"] == keyed_hash(stack_hash_key(limited_stack), ip)
    assert row["client_id"] == limited_stack.demo["clientId"] and row["organization"] == "demo"


async def test_code_trip_names_no_code(session, limited_stack):
    """A replayed code's trip is audited under ``login_code`` with the client and the address of the refused
    try; the code itself is in no row, only its keyed hash."""
    body = {"appid": limited_stack.demo["wechatAppId"], "openid": f"o-{secrets.token_hex(6)}"}
    async with session.post(limited_stack.sandbox + "/sandbox/login", json=body) as resp:
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": limited_stack.demo["clientId"], "code": code}
    ip, request_id = new_ip(), f"code-{secrets.token_hex(4)}"
    for i in range(4):
        headers = {**from_ip(ip), **({"X-Request-Id": request_id} if i == 3 else {})}
        await post(session, limited_stack.token_url, data=form, headers=headers)
    (row,) = await wait_for_rows(limited_stack, action="rate_limited", request_id=request_id)
    assert row["details"]["limit"] == "login_code" and row["client_ip"] == ip
    assert row["details"]["key"] == keyed_hash(stack_hash_key(limited_stack), code)
    assert code not in json.dumps(audit_rows(limited_stack))


async def test_worker_trip_is_audited(session, limited_stack):
    """The auth worker's per-WeChat-user limit is audited too, with the job's client, address and request id."""
    openid, ip, request_id = f"o-{secrets.token_hex(6)}", new_ip(), f"wx-{secrets.token_hex(4)}"
    for i in range(4):
        body = {"appid": limited_stack.demo["wechatAppId"], "openid": openid}
        async with session.post(limited_stack.sandbox + "/sandbox/login", json=body) as resp:
            code = (await resp.json())["code"]
        form = {"tag": "wechat_miniprogram", "client_id": limited_stack.demo["clientId"], "code": code}
        headers = {**from_ip(ip if i == 3 else new_ip()), **({"X-Request-Id": request_id} if i == 3 else {})}
        status, _body, _ = await post(session, limited_stack.token_url, data=form, headers=headers)
    assert status == 429
    (row,) = await wait_for_rows(limited_stack, action="rate_limited", request_id=request_id)
    assert row["details"]["limit"] == "wechat_user" and row["client_ip"] == ip
    assert row["client_id"] == limited_stack.demo["clientId"] and openid not in json.dumps(row)


async def _login_from(session: aiohttp.ClientSession, stack: Stack, headers: dict[str, str]) -> str:
    """A fresh user's login sent with ``headers``; returns the user's id."""
    body = {"appid": stack.demo["wechatAppId"], "openid": f"o-{secrets.token_hex(6)}"}
    async with session.post(stack.sandbox + "/sandbox/login", json=body) as resp:
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
    status, token, _ = await post(session, stack.token_url, data=form, headers=headers)
    assert status == 200, token
    return str(claims_of(token["access_token"])["sub"])


async def test_audit_client_ip_follows_trusted_proxies(session, limited_stack):
    """Audit rows record the address the limits use: behind the trusted proxy (127.0.0.1) the right-most
    untrusted hop of X-Forwarded-For; from any other peer (127.0.0.2 here) the header is a forgery, and the
    peer itself is recorded, on a login row and on a trip row alike."""
    ip = new_ip()
    user_id = await _login_from(session, limited_stack, from_ip(ip))
    (row,) = await wait_for_rows(limited_stack, action="login", target_user_id=user_id)
    assert row["client_ip"] == ip

    forged = {"X-Forwarded-For": new_ip()}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as untrusted:
        user_id = await _login_from(untrusted, limited_stack, forged)
        (row,) = await wait_for_rows(limited_stack, action="login", target_user_id=user_id)
        assert row["client_ip"] == "127.0.0.2"
        request_id = f"forged-{secrets.token_hex(4)}"
        for i in range(6):  # one login spent already: the 6th request from 127.0.0.2 is its 7th
            headers = {**forged, **({"X-Request-Id": request_id} if i == 5 else {})}
            status, _body, _ = await post(
                untrusted, limited_stack.token_url, data=no_code(limited_stack), headers=headers
            )
        assert status == 429
    (trip,) = await wait_for_rows(limited_stack, action="rate_limited", request_id=request_id)
    assert trip["client_ip"] == "127.0.0.2" and forged["X-Forwarded-For"] not in json.dumps(audit_rows(limited_stack))
