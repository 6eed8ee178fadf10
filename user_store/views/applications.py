"""What the gateway and the auth workers ask of an application: ``GET /internal/applications/{client_id}`` (its
public facts, which the gateway caches) and ``.../wechat-miniprogram`` (its WeChat provider, secret opened)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiohttp import web

from shared.config import ConfigError
from shared.errors import Unauthorized, Unavailable
from shared.guard import log_id
from shared.messages import ApplicationInfo, MiniProgramProvider
from user_store.appkeys import MASTER_KEY, PG_POOL
from user_store.db import Conn, transaction
from user_store.http import json_response
from user_store.provider_secrets import open_secret
from user_store.queries import applications as queries

log = structlog.get_logger()


async def _row(request: web.Request, query: Callable[[Conn, str], Awaitable[asyncpg.Record | None]]) -> asyncpg.Record:
    """What ``query`` reads for the path's ``client_id``; ``Unauthorized`` when no application has it."""
    client_id = request.match_info["client_id"]
    structlog.contextvars.bind_contextvars(client_id=log_id(client_id))
    async with transaction(request.app[PG_POOL]) as conn:
        row = await query(conn, client_id)
    if row is None:
        raise Unauthorized("client_id is invalid")
    return row


async def application_info(request: web.Request) -> web.Response:
    row = await _row(request, queries.application_info)
    return json_response(
        ApplicationInfo(
            client_id=row["client_id"],
            name=row["name"],
            organization=row["organization"],
            enable_sign_up=row["enable_sign_up"],
            miniprogram_appid=row["miniprogram_appid"],
            content_safety=row["content_safety"],
        )
    )


async def miniprogram_provider(request: web.Request) -> web.Response:
    row = await _row(request, queries.miniprogram_provider)
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
        MiniProgramProvider(
            client_id=row["client_id"],
            provider=row["provider"],
            appid=row["appid"],
            secret=secret,
            content_safety=row["content_safety"],
        )
    )
