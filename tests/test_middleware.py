"""``shared.middleware``: the request id rules, the request log line and the error middleware, the same in every
HTTP service."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from gateway.app import create_app as create_gateway
from shared.config import GatewayConfig, Secret, UserStoreConfig
from shared.errors import Conflict
from shared.middleware import REQUEST_ID, error_body, error_middleware, request_log
from user_store.app import create_app as create_user_store


async def _conflict(request: web.Request) -> web.Response:
    raise Conflict("the name is taken")


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def _echo_id(request: web.Request) -> web.Response:
    return web.json_response({"request_id": request[REQUEST_ID]})


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[request_log, error_middleware(lambda request, exc: error_body(exc))])
    app.router.add_post("/things/{name}", _conflict)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/id", _echo_id)
    app.router.add_get("/healthz", _echo_id)
    async with TestClient(TestServer(app)) as client:
        yield client


def _request_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "request"]


class TestRequestId:
    @pytest.mark.parametrize("given", ["req-42", "a" * 128, "trace:1.2_3-x"])
    async def test_a_sane_id_is_kept(self, client, given):
        """An id of up to 128 letters, digits and ``._:-`` is the request's id, echoed back."""
        async with client.get("/id", headers={"X-Request-Id": given}) as resp:
            assert resp.headers["X-Request-Id"] == given
            assert (await resp.json())["request_id"] == given

    @pytest.mark.parametrize("given", ["a" * 129, "has space", "tab\there", "<script>", ""])
    async def test_anything_else_is_replaced(self, client, given):
        """Any other id is replaced by a fresh one, never echoed."""
        async with client.get("/id", headers={"X-Request-Id": given}) as resp:
            echoed = resp.headers["X-Request-Id"]
        assert echoed != given and len(echoed) == 32


class TestLogLine:
    async def test_fields_of_a_failed_request(self, client):
        """One line per request: the route's pattern (not the path), status, outcome (the error code), duration and
        request id."""
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with client.post("/things/secret-looking-name", headers={"X-Request-Id": "r1"}) as resp:
                assert resp.status == 409
                assert (await resp.json()) == {"error": "conflict", "error_description": "the name is taken"}
        [line] = _request_lines(logs)
        assert line["route"] == "/things/{name}" and "secret-looking-name" not in str(line)
        assert (line["status"], line["outcome"], line["request_id"], line["method"]) == (409, "conflict", "r1", "POST")
        assert isinstance(line["duration_ms"], float) and line["log_level"] == "info"

    async def test_success_is_ok(self, client):
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with client.get("/id") as resp:
                assert resp.status == 200
        [line] = _request_lines(logs)
        assert (line["status"], line["outcome"]) == (200, "ok")

    async def test_probes_are_debug(self, client):
        """Health checks are logged at debug, so they do not drown the traffic."""
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with client.get("/healthz") as resp:
                assert resp.status == 200
        [line] = _request_lines(logs)
        assert line["log_level"] == "debug"

    async def test_unknown_path_is_unmatched_and_cut(self, client):
        """A path no route has is ``unmatched``, with the client-chosen path cut to 48 characters."""
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with client.get("/" + "x" * 200) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"] == "not_found"
        [line] = _request_lines(logs)
        assert line["route"] == "unmatched" and len(str(line["path"])) == 48


class TestErrors:
    async def test_bug_is_a_generic_500_with_one_traceback(self, client):
        """An unexpected exception: a 500 that says nothing of the cause, and one ``unhandled_error`` line."""
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with client.get("/boom") as resp:
                assert resp.status == 500
                body = await resp.json()
        assert body["error"] == "server_error" and "a bug" not in body["error_description"]
        assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["unhandled_error"]
        assert _request_lines(logs)[0]["outcome"] == "server_error"

    async def test_wrong_method_keeps_allow(self, client):
        async with client.get("/things/x") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "POST"
            assert (await resp.json())["error"] == "invalid_request"


def test_every_service_uses_them():
    """The gateway and the user store both start with the shared request log (one request-id rule, one line)."""
    gateway = create_gateway(
        GatewayConfig(user_store_url="http://127.0.0.1:1", internal_token=Secret("t" * 32), redis_url="redis://x")
    )
    store = create_user_store(UserStoreConfig(database_url=Secret("postgresql://x/y"), internal_token=Secret("t" * 32)))
    for app in (gateway, store):
        assert app.middlewares[0] is request_log
