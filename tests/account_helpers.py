"""Helpers for the account API tests: calls as a mini program (bearer token) or a developer's backend (client
credentials) make them, with the envelope checked on every answer."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp

from tests.oauth_helpers import claims_of, stack_login
from tests.stack import Stack

ENVELOPE_KEYS = {"status", "msg", "sub", "name", "data", "data2", "data3"}


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def app_params(stack: Stack, **params: str) -> dict[str, Any]:
    """Query parameters carrying the demo application's credentials, as Casdoor's SDKs send them."""
    return {"clientId": stack.demo["clientId"], "clientSecret": stack.demo["clientSecret"], **params}


async def api(
    session: aiohttp.ClientSession,
    stack: Stack,
    method: str,
    path: str,
    *,
    status: int = 200,
    token: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """Call an envelope route; assert the HTTP status, the envelope's keys and its ``status``; return the body."""
    if token:
        kwargs["headers"] = {**kwargs.get("headers", {}), **bearer(token)}
    async with session.request(method, stack.gateway + path, **kwargs) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, body
        assert set(body) == ENVELOPE_KEYS, body
        assert body["status"] == ("ok" if status == 200 else "error"), body
        assert resp.headers["Cache-Control"] == "no-store"
        return dict(body)


async def account(session: aiohttp.ClientSession, stack: Stack, token: str) -> dict[str, Any]:
    """The ``data`` of get-account for ``token``."""
    return dict((await api(session, stack, "GET", "/api/get-account", token=token))["data"])


async def update(
    session: aiohttp.ClientSession, stack: Stack, body: Any, *, status: int = 200, token: str = "", **params: Any
) -> dict[str, Any]:
    """POST update-user with a JSON body and query ``params``."""
    return await api(session, stack, "POST", "/api/update-user", status=status, token=token, json=body, params=params)


def other_org_app(stack: Stack, org: str) -> dict[str, str]:
    """Client credentials of a new application in a new organization ``org``."""
    stack.admin("create-org", "--name", org)
    app = stack.admin("create-app", "--org", org, "--name", f"{org}-app")
    return {"clientId": app["clientId"], "clientSecret": app["clientSecret"]}


async def new_user(session: aiohttp.ClientSession, stack: Stack, **extra: Any) -> dict[str, Any]:
    """A fresh mini-program user: its token body plus ``openid``, ``name`` and ``id``."""
    openid = f"o-{secrets.token_hex(6)}"
    token = await stack_login(session, stack, openid, **extra)
    claims = claims_of(token["access_token"])
    return {**token, "openid": openid, "name": claims["name"], "id": claims["sub"]}
