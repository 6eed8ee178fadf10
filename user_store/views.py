"""HTTP handlers of the internal API: decode at the edge, call a use case, encode a Struct."""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from aiohttp import web

from shared.config import ConfigError
from shared.errors import Unauthorized, Unavailable
from shared.guard import log_id
from shared.messages import ApplicationInfo, MiniProgramProvider, WechatLogin
from user_store import queries
from user_store.appkeys import AUDIT, MASTER_KEY, PG_POOL, RULES, SIGNER
from user_store.db import transaction
from user_store.http import json_response, read_json
from user_store.logins import login_wechat
from user_store.provider_secrets import open_secret

log = structlog.get_logger()

_login_decoder = msgspec.json.Decoder(WechatLogin)
_READY_TIMEOUT = 1.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers ``SELECT 1`` within a second."""
    try:
        async with asyncio.timeout(_READY_TIMEOUT), request.app[PG_POOL].acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # whatever stops SELECT 1 (timeout, lost server, closing pool) means "not ready"
        raise Unavailable(f"the database is not ready ({type(exc).__name__})", retry_after=1) from None
    return json_response({"status": "ok"})


async def get_application(request: web.Request) -> web.Response:
    client_id = request.match_info["client_id"]
    structlog.contextvars.bind_contextvars(client_id=log_id(client_id))
    async with transaction(request.app[PG_POOL]) as conn:
        row = await queries.application_info(conn, client_id)
    if row is None:
        raise Unauthorized("client_id is invalid")
    return json_response(
        ApplicationInfo(
            client_id=row["client_id"],
            name=row["name"],
            organization=row["organization"],
            enable_sign_up=row["enable_sign_up"],
            miniprogram_appid=row["miniprogram_appid"],
        )
    )


async def get_miniprogram_provider(request: web.Request) -> web.Response:
    client_id = request.match_info["client_id"]
    structlog.contextvars.bind_contextvars(client_id=log_id(client_id))
    async with transaction(request.app[PG_POOL]) as conn:
        row = await queries.miniprogram_provider(conn, client_id)
    if row is None:
        raise Unauthorized("client_id is invalid")
    if row["provider"] is None:
        raise Unauthorized("the application does not support wechat mini program")
    try:
        secret = open_secret(
            request.app[MASTER_KEY], row["provider_id"], row["provider"], row["app_secret"], row["app_secret_sealed"]
        )
    except ConfigError as exc:
        # The cause (which provider, missing or wrong master key) is for the operator; the caller gets a plain 503.
        log.error("provider_secret_unreadable", provider=row["provider"], error=exc.description)
        raise Unavailable(
            "the application's WeChat provider cannot be used: its secret is unreadable on this server", retry_after=30
        ) from None
    return json_response(
        MiniProgramProvider(client_id=row["client_id"], provider=row["provider"], appid=row["appid"], secret=secret)
    )


async def post_wechat_login(request: web.Request) -> web.Response:
    login = await read_json(request, _login_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(login.client_id))
    app = request.app
    result = await login_wechat(app[PG_POOL], app[SIGNER], login, app[RULES], app[AUDIT], app[MASTER_KEY])
    return json_response(result)
