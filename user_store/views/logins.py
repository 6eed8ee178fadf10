"""``POST /internal/logins/wechat-miniprogram``: an auth worker hands over a code WeChat accepted; the user is found or
created and the token pair minted (``user_store/logins.py``). ``.../batch``: the logins a worker's jobs reached at
once, in one request: up to ``MAX_BATCH`` of them share one transaction, each keeping its own outcome and log line."""

from __future__ import annotations

import asyncio
import contextvars
import time

import msgspec
import structlog
from aiohttp import web

from shared.errors import MinidoorError
from shared.guard import log_id
from shared.messages import ErrorBody, LoginOutcome, LoginOutcomes, LoginResult, PhoneLogin, WechatLogin, WechatLogins
from shared.middleware import valid_request_id
from user_store.appkeys import AUDIT, MASTER_KEY, METRICS, PG_POOL, RULES, SIGNER
from user_store.http import json_response, read_json
from user_store.logins import MAX_BATCH, login_wechat, login_wechat_batch
from user_store.middleware import client_ip
from user_store.phone_logins import login_phone

_login_decoder = msgspec.json.Decoder(WechatLogin)
_logins_decoder = msgspec.json.Decoder(WechatLogins)
_phone_decoder = msgspec.json.Decoder(PhoneLogin)
log = structlog.get_logger()


async def wechat_login(request: web.Request) -> web.Response:
    login = await read_json(request, _login_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(login.client_id))
    app = request.app
    result = await login_wechat(app[PG_POOL], app[SIGNER], login, app[RULES], app[AUDIT], app[MASTER_KEY])
    return json_response(result)


async def phone_login(request: web.Request) -> web.Response:
    """``POST /internal/logins/wechat-phone``: a phone number WeChat vouched for (``user_store/phone_logins.py``)."""
    login = await read_json(request, _phone_decoder)
    structlog.contextvars.bind_contextvars(client_id=log_id(login.client_id))
    app = request.app
    result = await login_phone(app[PG_POOL], app[SIGNER], login, app[AUDIT], app[MASTER_KEY])
    return json_response(result)


async def wechat_logins(request: web.Request) -> web.Response:
    batch = await read_json(request, _logins_decoder)
    structlog.contextvars.bind_contextvars(logins=len(batch.logins))
    start = time.perf_counter()
    contexts = [
        _login_context(login, _nth(batch.request_ids, i), _nth(batch.client_ips, i))
        for i, login in enumerate(batch.logins)
    ]
    app = request.app
    parts = await asyncio.gather(
        *(
            login_wechat_batch(
                app[PG_POOL],
                app[SIGNER],
                batch.logins[first : first + MAX_BATCH],
                app[RULES],
                app[AUDIT],
                app[MASTER_KEY],
                contexts=contexts[first : first + MAX_BATCH],
            )
            for first in range(0, len(batch.logins), MAX_BATCH)
        )
    )
    results = [result for part in parts for result in part]
    outcomes = [ctx.run(_outcome, app, result, start) for ctx, result in zip(contexts, results, strict=True)]
    return json_response(LoginOutcomes(outcomes=outcomes))


def _login_context(login: WechatLogin, request_id: str, client_ip_value: str) -> contextvars.Context:
    """A login's own log context, as its request would have had alone: what it binds stays its own."""
    context = {"client_id": log_id(login.client_id)}
    # The same rules as for one login's headers (shared.middleware, user_store.middleware): a body is no more trusted.
    if valid_request_id(request_id):
        context["request_id"] = request_id
    if address := client_ip(client_ip_value):
        context["client_ip"] = address  # for its audit row, as the middleware binds a request's
    ctx = contextvars.copy_context()
    ctx.run(structlog.contextvars.bind_contextvars, **context)
    return ctx


def _outcome(app: web.Application, result: LoginResult | Exception, start: float) -> LoginOutcome:
    """One login's answer, as ``wechat_login`` would have given it alone, and its canonical line (in its context)."""
    if isinstance(result, MinidoorError):
        log.info("login", outcome=result.error, status=result.status, duration_ms=_ms(start))
        return LoginOutcome(
            status=result.status,
            error=ErrorBody(
                error=result.error,
                error_description=result.description,
                message=result.message if result.params else "",
                params=result.params,
            ),
            retry_after=result.retry_after,
        )
    if isinstance(result, Exception):
        log.error("unhandled_error", exc_info=result)
        error = ErrorBody(error="server_error", error_description="internal error; the request id identifies it")
        return LoginOutcome(status=500, error=error)
    app[METRICS].logins.labels("created" if result.created else "returning").inc()
    log.info("login", outcome="ok", status=200, duration_ms=_ms(start))
    return LoginOutcome(result=result)


def _nth(values: list[str], i: int) -> str:
    return values[i] if i < len(values) else ""


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
