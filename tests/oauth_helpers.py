"""Helpers for the token-validation tests: log in through a running stack, introspect and revoke as clients do."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import msgspec
from jwt.utils import base64url_encode

from shared.errors import InvalidToken
from shared.redis_keys import RedisKeys
from shared.verifier import Verifier, http_jwks
from tests.stack import Stack


async def stack_login(
    session: aiohttp.ClientSession,
    stack: Stack,
    openid: str,
    *,
    client_id: str = "",
    appid: str = "",
    codes: list[str] | None = None,
    **extra: str,
) -> dict[str, Any]:
    """A full mini-program login (sandbox wx.login, then the gateway's token endpoint); returns the token body.
    ``codes`` collects the wx.login() code used (``issued_session_key`` asks the sandbox what it answered)."""
    body = {"appid": appid or stack.demo["wechatAppId"], "openid": openid}
    async with session.post(stack.sandbox + "/sandbox/login", json=body) as resp:
        assert resp.status == 200, await resp.text()
        code = (await resp.json())["code"]
    if codes is not None:
        codes.append(code)
    form = {"tag": "wechat_miniprogram", "client_id": client_id or stack.demo["clientId"], "code": code, **extra}
    async with session.post(stack.token_url, data=form) as resp:
        token = await resp.json()
        assert resp.status == 200, token
    return dict(token)


async def issued_session_key(session: aiohttp.ClientSession, stack: Stack, code: str) -> str:
    """The session_key the sandbox handed out for ``code``'s exchange."""
    async with session.get(f"{stack.sandbox}/sandbox/codes/{code}/session_key") as resp:
        return str((await resp.json())["session_key"])


def basic(client_id: str, secret: str) -> dict[str, str]:
    """Headers for HTTP Basic client authentication."""
    return {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}


async def introspect(
    session: aiohttp.ClientSession,
    stack: Stack,
    token: str,
    *,
    auth: dict[str, str] | None = None,
    status: int = 200,
    **form: str,
) -> dict[str, Any]:
    """POST the introspection endpoint (Basic auth with the demo client unless ``auth`` or form credentials)."""
    if auth is None and "client_id" not in form:
        auth = basic(stack.demo["clientId"], stack.demo["clientSecret"])
    async with session.post(
        stack.gateway + "/api/login/oauth/introspect", data={"token": token, **form}, headers=auth
    ) as resp:
        body = await resp.json()
        assert resp.status == status, body
        assert resp.headers["Cache-Control"] == "no-store"
        return dict(body)


async def revoke(
    session: aiohttp.ClientSession,
    stack: Stack,
    token: str,
    *,
    auth: dict[str, str] | None = None,
    status: int = 200,
    **form: str,
) -> str:
    """POST the RFC 7009 revocation endpoint; returns the body text."""
    if auth is None and "client_id" not in form:
        auth = basic(stack.demo["clientId"], stack.demo["clientSecret"])
    async with session.post(
        stack.gateway + "/api/login/oauth/revoke", data={"token": token, **form}, headers=auth
    ) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return text


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1) -> float:
    """Await ``check()`` until it is true; returns the seconds it took, fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


def refuses(verifier: Verifier, token: str) -> Callable[[], Awaitable[bool]]:
    """A check for ``eventually``: whether ``verifier`` now refuses ``token`` (revoked, or its key retired)."""

    async def check() -> bool:
        try:
            await verifier.verify(token)
        except InvalidToken:
            return True
        return False

    return check


def make_app(stack: Stack, name: str, *, expire_in_hours: float = 168.0, alg: str = "") -> dict[str, str]:
    """A new application of the demo organization with its own mini-program provider, known to the sandbox;
    ``alg`` is its signing algorithm (default: the stack's DEFAULT_SIGNING_ALG, else RS256). Its signing key is in
    the JWKS (the user store has loaded it) when this returns."""
    args = ["--expire-in-hours", str(expire_in_hours), *(["--alg", alg] if alg else [])]
    app = stack.admin("create-app", "--org", "demo", "--name", name, *args)
    appid, secret = f"wx{name.replace('-', '')[:14]:0<14}", "s" * 32
    stack.admin("attach-provider", "--app", name, "--appid", appid, stdin=secret)
    payload = json.dumps({"appid": appid, "secret": secret}).encode()
    req = urllib.request.Request(
        stack.sandbox + "/sandbox/apps", data=payload, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    kid = stack.admin("certificate", "--app", name)["name"]
    deadline = time.monotonic() + 10
    while kid not in jwks_kids(stack):  # a first ES256 key waits for the store's next reload
        assert time.monotonic() < deadline, f"{name}'s signing key {kid} never reached the JWKS"
        time.sleep(0.2)
    return {"clientId": app["clientId"], "clientSecret": app["clientSecret"], "appid": appid, "name": name}


def jwks_kids(stack: Stack) -> set[str]:
    with urllib.request.urlopen(stack.gateway + "/.well-known/jwks", timeout=10) as resp:
        return {key["kid"] for key in json.load(resp)["keys"]}


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """``alg: none``: the classic forgery every verifier must refuse."""
    header = base64url_encode(msgspec.json.encode({"alg": "none", "typ": "JWT", "kid": kid}))
    return (header + b"." + base64url_encode(msgspec.json.encode(claims)) + b".").decode()


def hs256_token(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    """HS256 with ``secret``: with a public key's PEM as the secret, the algorithm-confusion forgery."""
    header = base64url_encode(msgspec.json.encode({"alg": "HS256", "typ": "JWT", "kid": kid}))
    signing_input = header + b"." + base64url_encode(msgspec.json.encode(claims))
    return (signing_input + b"." + base64url_encode(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


def stack_verifier(
    session: aiohttp.ClientSession, stack: Stack, redis: Any = None, *, audience: str | None = None
) -> Verifier:
    """A service's ``Verifier`` for ``stack``'s tokens, as a user would set one up: the JWKS from the gateway, and
    revocations from the stack's Redis when ``redis`` is given; the demo application's client id as the audience."""
    return Verifier(
        issuer=stack.gateway,
        audience=audience or stack.demo["clientId"],
        jwks=http_jwks(session, stack.gateway + "/.well-known/jwks"),
        redis=redis,
        redis_keys=RedisKeys(stack.env["KEY_PREFIX"]) if redis is not None else None,
    )
