"""No secret and no personal data in any log line of a full stack run, hostile input and good traffic alike."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp

from tests.account_helpers import update
from tests.conftest import _stack_fixture
from tests.oauth_helpers import basic
from tests.stack import Stack

INTERNAL_TOKEN = "itok-" + secrets.token_urlsafe(24)
MASTER_KEY = "mkey-" + secrets.token_urlsafe(32)

secret_stack = _stack_fixture("secret_stack", INTERNAL_TOKEN=INTERNAL_TOKEN, MASTER_KEY=MASTER_KEY)


async def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is (aiohttp's client would refuse it) and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()


async def login(session: aiohttp.ClientSession, stack: Stack, known: list[str]) -> dict[str, Any]:
    """A mini-program login; what it handed out (tokens, the session_key WeChat issued) goes into ``known``."""
    openid = "o" + secrets.token_hex(12)
    body = {"appid": stack.demo["wechatAppId"], "openid": openid}
    async with session.post(stack.sandbox + "/sandbox/login", json=body) as resp:
        code = (await resp.json())["code"]
    form = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
    async with session.post(stack.token_url, data=form) as resp:
        token = await resp.json()
        assert resp.status == 200, token
    async with session.get(f"{stack.sandbox}/sandbox/codes/{code}/session_key") as resp:
        session_key = (await resp.json())["session_key"]
    assert session_key
    known += [session_key, openid, token["access_token"], token["refresh_token"], token["id_token"]]
    return dict(token)


async def test_no_secret_in_any_log_line(secret_stack: Stack):
    """Every secret the run knew (internal credential, master key, client secrets, AppSecrets, session keys, a
    password, access and refresh tokens, a phone number and an email) appears nowhere in stack.log, even when
    clients put them where identifiers go or send them in headers aiohttp refuses."""
    stack = secret_stack
    demo = stack.demo
    known = [INTERNAL_TOKEN, MASTER_KEY, demo["clientSecret"], demo["wechatAppSecret"]]
    password = "pw-" + secrets.token_hex(8)
    email = f"m{secrets.token_hex(5)}@example.com"
    phone = "1390" + str(secrets.randbelow(10**7)).zfill(7)
    known += [password, email, phone]
    async with aiohttp.ClientSession() as session:
        first = await login(session, stack, known)
        second = await login(session, stack, known)
        async with session.post(
            stack.token_url,
            data={
                "grant_type": "refresh_token",
                "client_id": demo["clientId"],
                "refresh_token": first["refresh_token"],
            },
        ) as resp:
            rotated = await resp.json()
            assert resp.status == 200, rotated
        known += [rotated["access_token"], rotated["refresh_token"]]
        await update(
            session, stack, {"password": password, "email": email, "phone": phone}, token=rotated["access_token"]
        )
        async with session.post(
            stack.gateway + "/api/login/oauth/introspect",
            data={"token": second["access_token"]},
            headers=basic(demo["clientId"], demo["clientSecret"]),
        ) as resp:
            assert (await resp.json())["active"] is True
        async with session.get(
            stack.gateway + "/api/userinfo", headers={"Authorization": f"Bearer {rotated['access_token']}"}
        ) as resp:
            assert resp.status == 200

        # Hostile: secrets where ids go, wrong credentials carrying real secrets, headers aiohttp refuses to parse.
        async with session.post(
            stack.token_url, data={"client_id": second["access_token"], "client_secret": demo["clientSecret"]}
        ) as resp:
            assert resp.status in (400, 401)
        async with session.post(
            stack.token_url,
            data={"grant_type": "refresh_token", "client_id": demo["clientId"] + "x", "refresh_token": password},
        ) as resp:
            assert resp.status in (400, 401)
        async with session.post(
            stack.gateway + "/api/login/oauth/introspect",
            data={"token": second["refresh_token"]},
            headers=basic(demo["clientId"], demo["wechatAppSecret"]),
        ) as resp:
            assert resp.status == 401
    for port, credential in ((stack.user_store_port, INTERNAL_TOKEN), (stack.gateway_port, second["access_token"])):
        answer = await raw(
            port, f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {credential}\x00\r\n\r\n".encode()
        )
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    answer = await raw(
        stack.gateway_port,
        b"POST /api/login/oauth/access_token?client_id=" + email.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Cookie: " + phone.encode() + b"\x01\r\nContent-Length: 0\r\n\r\n",
    )
    assert answer.split(b" ", 2)[1].startswith(b"4"), answer[:200]

    assert stack.stop() == 0
    log = stack.log_path.read_text(errors="replace")
    assert "/api/login/oauth/access_token" in log, "the canonical lines are missing"
    leaks = {secret[:12] + "…": _line_with(log, secret) for secret in known if secret in log}
    assert not leaks, leaks


def _line_with(log: str, secret: str) -> str:
    return next(line for line in log.splitlines() if secret in line)[:400]
