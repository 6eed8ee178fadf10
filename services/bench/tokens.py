"""Token validation: introspections per second over HTTP, and local verifications per second on one core."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

from services.bench.baseline import baseline_server
from services.bench.harness import BenchContext, Result, cpu_rate, http_rate
from services.bench.stack import BenchStack
from shared.verifier import Verifier, http_jwks

Request = Callable[[aiohttp.ClientSession], Awaitable[None]]


async def introspection_over_http(ctx: BenchContext) -> list[Result]:
    """RFC 7662 introspections of a live token through the gateway and the user store, beside the same requests
    to a trivial aiohttp endpoint."""
    stack = await ctx.stack()
    token = await _login(stack)
    auth = {"Authorization": aiohttp.encode_basic_auth(stack.demo["clientId"], stack.demo["clientSecret"])}
    form = {"token": token, "token_type_hint": "access_token"}

    def poster(url: str) -> Request:
        async def post(session: aiohttp.ClientSession) -> None:
            async with session.post(url, data=form, headers=auth) as resp:
                body = await resp.read()
            if resp.status != 200 or b'"active":true' not in body:
                raise RuntimeError(f"{url} answered {resp.status}: {body[:200]!r}")

        return post

    rate = await http_rate(poster(stack.gateway + "/api/login/oauth/introspect"), ctx)
    with baseline_server() as server:
        baseline = await http_rate(poster(server.url + "/introspect"), ctx)
    return [Result("introspection over HTTP", rate, "trivial aiohttp endpoint", baseline)]


async def local_verification(ctx: BenchContext) -> list[Result]:
    """``shared.verifier.Verifier.verify`` on one core (JWKS cached; the revocation check is its dict lookup),
    beside a bare RS256 signature check of the same token with the same key."""
    stack = await ctx.stack()
    token = await _login(stack)
    async with aiohttp.ClientSession() as session:
        jwks_url = stack.gateway + "/.well-known/jwks"
        verifier = Verifier(issuer=stack.gateway, audience=stack.demo["clientId"], jwks=http_jwks(session, jwks_url))
        async with verifier:
            await verifier.verify(token)
            rate = await cpu_rate(lambda: verifier.verify(token), ctx)
        async with session.get(jwks_url) as resp:
            jwks = await resp.json()
    signing_input, _, encoded = token.rpartition(".")
    signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    key = RSAAlgorithm.from_jwk(jwks["keys"][0])
    assert isinstance(key, rsa.RSAPublicKey)
    message = signing_input.encode()

    async def bare_verify() -> None:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    baseline = await cpu_rate(bare_verify, ctx)
    return [Result("local verification, 1 core", rate, "bare RS256 signature check", baseline)]


async def _login(stack: BenchStack) -> str:
    """An access token of the demo application, through the real mini-program login."""
    async with aiohttp.ClientSession() as session:
        wx = {"appid": stack.demo["wechatAppId"], "openid": "bench-user"}
        async with session.post(stack.sandbox + "/sandbox/login", json=wx) as resp:
            code = (await resp.json())["code"]
        form = {"tag": "wechat_miniprogram", "client_id": stack.demo["clientId"], "code": code}
        async with session.post(stack.gateway + "/api/login/oauth/access_token", data=form) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"the benchmark login failed: {body}")
    return str(body["access_token"])
