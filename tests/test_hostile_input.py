"""Hostile input against a real stack, in raw HTTP where aiohttp's client would refuse to send it: every route answers
a clear 4xx, no log line holds a secret, and the public surface shows no metrics and no version banner."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from services.ports import free_port
from shared.errors import BadRequest
from shared.guard import MAX_JSON_DEPTH, PARSER_ERROR_BODY, check_body, json_depth, log_id, valid_client_id
from shared.logs import _redact_aiohttp
from tests.conftest import _stack_fixture

TOKEN = "hostile-" + secrets.token_urlsafe(24)
MASTER_KEY = secrets.token_urlsafe(32)
WORKER_PORT = free_port()
hostile = _stack_fixture(
    "hostile", INTERNAL_TOKEN=TOKEN, MASTER_KEY=MASTER_KEY, BODY_READ_TIMEOUT="1", WORKER_HTTP_PORT=str(WORKER_PORT)
)

TOKEN_PATH = "/api/login/oauth/access_token"
GATEWAY_POSTS = [TOKEN_PATH, "/api/login/oauth/introspect", "/api/login/oauth/refresh_token", "/api/update-user"]
STORE_POSTS = ["/internal/tokens/introspect", "/internal/tokens/refresh", "/internal/account/update-user"]
DEEP = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"client_id": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}"
BAD_UTF8 = b'{"client_id": "\xff\xfe", "grant_type": "refresh_token"}'


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_http(port: int, request: bytes, *, timeout: float = 15.0) -> Answer:
    """Send ``request`` as is and read one answer: its head, then its Content-Length (a server may keep reading an
    unfinished body for a while after it answered), or until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        return Answer(data)
    finally:
        writer.close()


def post(path: str, body: bytes, *, content_type: str = "application/json", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + extra + b"\r\n"


def internal() -> bytes:
    return f"Authorization: Bearer {TOKEN}\r\n".encode()


def assert_4xx(answer: Answer) -> None:
    assert 400 <= answer.status < 500, (answer.status, answer.body)


class TestParsers:
    def test_depth_counts_nesting_not_brackets_in_strings(self):
        """json_depth counts nested arrays and objects and ignores brackets inside strings, escaped quotes too."""
        assert json_depth(b'{"a": [1, {"b": "[[[[\\"]]]"}]}') == 3
        assert json_depth(DEEP) == 5000
        assert json_depth(b'"{{{{"') == 0

    def test_body_checks(self):
        """check_body refuses nesting beyond the limit and invalid UTF-8, and passes an ordinary body."""
        check_body(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
        check_body(b"grant_type=refresh_token&x=%5B%5B")
        with pytest.raises(BadRequest, match="deeper"):
            check_body(DEEP_OBJECT)
        with pytest.raises(BadRequest, match="UTF-8"):
            check_body(BAD_UTF8)

    def test_client_id_shape(self):
        """A minted client id (20 hex) passes; a 9,000-character one or a JWT pasted as a client id cannot be valid."""
        assert valid_client_id(secrets.token_hex(10))
        assert not valid_client_id("a" * 9000)
        assert not valid_client_id("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
        assert not valid_client_id("")

    def test_log_id_hides_the_value(self):
        """A client-supplied identifier is logged as a short hash, stable, never the value."""
        value = "eyJhbGciOiJSUzI1NiJ9.secret-token"
        assert log_id(value) == log_id(value) and "eyJ" not in log_id(value) and len(log_id(value)) < 24

    def test_aiohttp_bad_request_line_is_redacted(self):
        """aiohttp.server's line about a bad request keeps its message but loses the exception's raw request text."""
        exc = BadHttpMessage("Invalid header value char", headers=None)
        exc.message = "Authorization: Bearer very-secret-token\\x00"
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s", ("1.2.3.4",), None
        )
        record.exc_info = (type(exc), exc, None)
        assert _redact_aiohttp(record)
        text = logging.Formatter().format(record)
        assert "very-secret-token" not in text and "Error handling request from 1.2.3.4" in text


class TestNoServerErrors:
    @pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, BAD_UTF8], ids=["deep-array", "deep-object", "bad-utf8"])
    @pytest.mark.parametrize("path", GATEWAY_POSTS)
    async def test_gateway_bodies(self, hostile, path, body):
        """Deep JSON and invalid UTF-8 in a body are a 4xx on every public POST route."""
        assert_4xx(await raw_http(hostile.gateway_port, post(path, body)))

    @pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, BAD_UTF8], ids=["deep-array", "deep-object", "bad-utf8"])
    @pytest.mark.parametrize("path", STORE_POSTS)
    async def test_user_store_bodies(self, hostile, path, body):
        """The same bodies are a 400 on the user store's internal routes, for a caller holding the credential."""
        answer = await raw_http(hostile.user_store_port, post(path, body, extra=internal()))
        assert answer.status == 400, answer.body

    @pytest.mark.parametrize("path", GATEWAY_POSTS)
    async def test_non_utf8_bearer(self, hostile, path):
        """A bearer token with bytes that are not UTF-8 is a 4xx, not a 500."""
        extra = b"Authorization: Bearer \xff\xfeabc\r\n"
        assert_4xx(await raw_http(hostile.gateway_port, post(path, b"{}", extra=extra)))
        assert_4xx(await raw_http(hostile.user_store_port, post(STORE_POSTS[0], b"{}", extra=extra)))

    @pytest.mark.parametrize("port_of", ["gateway_port", "user_store_port"])
    async def test_non_utf8_query(self, hostile, port_of):
        """A query that percent-decodes to bytes that are not UTF-8 is a 400."""
        request = b"GET /api/userinfo?client_id=%FF%FE HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await raw_http(getattr(hostile, port_of), request)
        assert answer.status == 400, answer.body

    @pytest.mark.parametrize("path", [TOKEN_PATH, "/api/login/oauth/introspect", "/api/login/oauth/refresh_token"])
    async def test_long_client_id_is_401(self, hostile, path):
        """A 9,000-character client_id is refused as an invalid client (401), not a 503 from the user store."""
        form = f"grant_type=refresh_token&tag=wechat_miniprogram&code=x&token=x&refresh_token=x&client_id={'a' * 9000}"
        body = form.encode()
        answer = await raw_http(
            hostile.gateway_port, post(path, body, content_type="application/x-www-form-urlencoded")
        )
        assert answer.status == 401 and answer.json()["error"] == "invalid_client", answer.body

    @pytest.mark.parametrize("client_id", [".", "..", "{x}", "a{b}c", "%2e%2e"])
    @pytest.mark.parametrize("where", ["form", "json", "basic", "account-query", "account-basic"])
    async def test_path_like_client_id_is_401(self, hostile, client_id, where):
        """client_id ".", ".." or with braces is 401 invalid_client at the gateway, however it is sent; such ids once
        reached the user store's URL path and answered 404/5xx."""
        form = f"tag=wechat_miniprogram&code=x&client_id={client_id}"
        basic = base64.b64encode(f"{client_id}:secret".encode()).decode()
        request = {
            "form": post(TOKEN_PATH, form.encode(), content_type="application/x-www-form-urlencoded"),
            "json": post(
                TOKEN_PATH, json.dumps({"tag": "wechat_miniprogram", "code": "x", "client_id": client_id}).encode()
            ),
            "basic": post(
                TOKEN_PATH,
                b"tag=wechat_miniprogram&code=x",
                content_type="application/x-www-form-urlencoded",
                extra=f"Authorization: Basic {basic}\r\n".encode(),
            ),
            "account-query": get(f"/api/get-users?clientId={client_id}&clientSecret=s"),
            "account-basic": get("/api/get-users", f"Authorization: Basic {basic}\r\n".encode()),
        }[where]
        answer = await raw_http(hostile.gateway_port, request)
        assert answer.status == 401, answer.body

    @pytest.mark.parametrize("path", [TOKEN_PATH, "/api/login/oauth/introspect", "/api/userinfo"])
    async def test_non_ascii_basic_is_400(self, hostile, path):
        """Non-ASCII in HTTP Basic credentials is a 400, not a 500."""
        extra = "Authorization: Basic é\r\n".encode()
        answer = await raw_http(
            hostile.gateway_port, post(path, b"token=x", content_type="application/x-www-form-urlencoded", extra=extra)
        )
        assert answer.status == 400, answer.body

    async def test_huge_body_on_a_route_that_reads_none(self, hostile):
        """8 MB announced to /api/userinfo (a GET route that reads no body) is 413 before the body is read."""
        request = (
            b"GET /api/userinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 8388608\r\n\r\n"
            + b"x" * 65536
        )
        answer = await raw_http(hostile.gateway_port, request)
        assert answer.status == 413, answer.body

    @pytest.mark.parametrize("port_of", ["gateway_port", "user_store_port"])
    async def test_content_length_never_reached(self, hostile, port_of):
        """A Content-Length the body never reaches is a 408 once BODY_READ_TIMEOUT (1 s here) passes, not a hang."""
        request = post(STORE_POSTS[0] if port_of == "user_store_port" else TOKEN_PATH, b"{" * 10)
        request = request.replace(b"Content-Length: 10", b"Content-Length: 1000")
        answer = await raw_http(getattr(hostile, port_of), request, timeout=10)
        assert answer.status == 408, answer.body

    async def test_client_leaving_mid_body_logs_no_error(self, hostile):
        """A client that closes the connection mid-body leaves one canonical 400 line and no error or traceback."""
        request_id = f"gone-{secrets.token_hex(4)}"
        request = post(TOKEN_PATH, b'{"client_id": "x"').replace(
            b"Content-Length: 17", b"Content-Length: 500\r\nX-Request-Id: " + request_id.encode()
        )
        _reader, writer = await asyncio.open_connection("127.0.0.1", hostile.gateway_port)
        writer.write(request)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        line = await _log_line(hostile, request_id)
        assert line["status"] == 400
        log = hostile.log_path.read_text(errors="replace")
        assert "Traceback" not in log
        assert not [entry for entry in _log_entries(hostile) if entry.get("level") in ("error", "critical")]

    async def test_sandbox_and_worker_port_refuse_garbage(self, hostile):
        """The WeChat sandbox and the worker's status port answer garbage with a 4xx too."""
        sandbox = hostile.sandbox_port
        for body in (DEEP, BAD_UTF8):
            assert_4xx(await raw_http(sandbox, post("/sandbox/login", body)))
        assert_4xx(await raw_http(WORKER_PORT, post("/healthz", DEEP)))
        bad_query = b"GET /healthz?x=%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert_4xx(await raw_http(WORKER_PORT, bad_query))
        assert_4xx(await raw_http(sandbox, bad_query.replace(b"/healthz", b"/sns/jscode2session")))


class TestPublicSurface:
    async def test_metrics_need_the_internal_credential(self, hostile, session):
        """/metrics answers 401 without the internal bearer token on the gateway, user store and worker port, and
        200 with it; the user store's health routes stay open."""
        urls = [hostile.gateway, f"http://127.0.0.1:{hostile.user_store_port}", f"http://127.0.0.1:{WORKER_PORT}"]
        for base in urls:
            async with session.get(base + "/metrics") as resp:
                assert resp.status == 401, base
            async with session.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200, base
                assert "# TYPE" in await resp.text()
        for probe in ("/healthz", "/readyz"):
            async with session.get(f"http://127.0.0.1:{hostile.user_store_port}{probe}") as resp:
                assert resp.status == 200

    async def test_no_version_banner(self, hostile):
        """No service names aiohttp or Python in Server, on ordinary answers and on the parser's own 400."""
        ports = [hostile.gateway_port, hostile.user_store_port, hostile.sandbox_port, WORKER_PORT]
        for port in ports:
            for request in (
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x00Header: y\r\n\r\n",
            ):
                answer = await raw_http(port, request)
                server = answer.headers.get("server", "")
                assert "aiohttp" not in server and "Python" not in server, (port, request, server)

    @pytest.mark.parametrize(
        "request_bytes",
        [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET\x00\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET" + b"s" * 9000 + b"\r\n\r\n",
            b"G\x00ET /healthz?access_token=SECRET HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz?access_token=SECRET\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        ],
        ids=["nul-in-header", "oversized-header", "bad-method", "nul-in-target"],
    )
    async def test_parser_errors_do_not_echo_the_request(self, hostile, request_bytes):
        """A request aiohttp's parser refuses gets a fixed JSON 400 on every service: aiohttp's own page quotes
        the raw line, a bearer token included."""
        secret = "hostile-" + secrets.token_urlsafe(12)
        ports = [hostile.gateway_port, hostile.user_store_port, hostile.sandbox_port, WORKER_PORT]
        for port in ports:
            answer = await raw_http(port, request_bytes.replace(b"SECRET", secret.encode()))
            assert answer.status == 400, (port, answer.body)
            assert answer.body == PARSER_ERROR_BODY and secret.encode() not in answer.body, (port, answer.body)
            assert answer.headers["content-type"].startswith("application/json")


def _log_entries(stack: Any) -> list[dict[str, Any]]:
    entries = []
    for line in stack.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


async def _log_line(stack: Any, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The canonical line of ``request_id``, once the gateway wrote it."""
    async with asyncio.timeout(timeout):
        while True:
            for entry in _log_entries(stack):
                if entry.get("request_id") == request_id and entry.get("event") == "request":
                    return entry
            await asyncio.sleep(0.05)
