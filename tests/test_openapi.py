"""The gateway's OpenAPI document: it lists every public route of the router, it is valid OpenAPI 3.1, and the
gateway serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.openapi import INTERNAL_PATHS, PATH, build_document
from gateway.views.account import ENVELOPE_PATHS
from shared.config import GatewayConfig, Secret

METHODS = ("get", "post", "put", "patch", "delete")


def gateway_config(redis_url: str = "redis://127.0.0.1:9", key_prefix: str = "openapi") -> GatewayConfig:
    return GatewayConfig(
        internal_token=Secret("t" * 32), redis_url=redis_url, user_store_url="http://127.0.0.1:9", key_prefix=key_prefix
    )


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every public route: HEAD is aiohttp's automatic twin of each GET."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.method != "HEAD" and resource.canonical not in INTERNAL_PATHS:
            found.add((route.method, resource.canonical))
    return found


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


@pytest.fixture(name="gateway")
async def _gateway(redis_url: str, key_prefix: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(create_app(gateway_config(redis_url, key_prefix)))) as client:
        yield client


class TestDocument:
    def test_every_route_is_documented(self):
        """The document's paths and methods are exactly the router's, less HEAD and the internal /metrics: a route
        added without documenting it fails here."""
        app = create_app(gateway_config())
        assert documented(build_document()) == routed(app)
        assert ("GET", "/metrics") in {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}

    def test_valid_openapi_3_1(self):
        """openapi-spec-validator accepts the document as OpenAPI 3.1."""
        doc = build_document()
        assert doc["openapi"].startswith("3.1")
        validate(doc)

    def test_error_forms_follow_the_route(self):
        """Account routes document Casdoor's envelope for every error, the others OAuth's error JSON; every route
        lists the input guard's 400, 408 and 413."""
        doc = build_document()
        for path, method, op in operations(doc):
            # /readyz's own 503 ({"status": "unavailable"}) is the one error inline.
            errors = {
                status: ref["$ref"] for status, ref in op["responses"].items() if int(status) >= 400 and "$ref" in ref
            }
            assert {"400", "408", "413"} <= set(errors), (path, method)
            kind = "Envelope" if path in ENVELOPE_PATHS else "OAuth"
            assert all(ref.rsplit("/", 1)[1].startswith(kind) for ref in errors.values()), (path, method, errors)

    def test_rate_limited_routes(self):
        """429 is listed where a limit applies (token endpoint, client authentication, bearer tokens, update-user),
        each with a required Retry-After; so is 503."""
        doc = build_document()
        limited = {path for path, _method, op in operations(doc) if "429" in op["responses"]}
        assert {"/api/login/oauth/access_token", "/api/login/oauth/introspect", "/api/login/oauth/revoke"} <= limited
        assert ENVELOPE_PATHS <= limited
        responses = doc["components"]["responses"]
        for path, _method, op in operations(doc):
            if path in limited:
                assert "503" in op["responses"]
                ref = op["responses"]["429"]["$ref"].rsplit("/", 1)[1]
                assert responses[ref]["headers"]["Retry-After"]["required"] is True

    def test_login_links_to_the_account_api(self):
        """The token wrapper links to the account calls with its access token, and to the refresh grant."""
        links = build_document()["paths"]["/api/login/oauth/access_token"]["post"]["responses"]["200"]["links"]
        assert links["GetAccount"]["parameters"] == {"query.accessToken": "$response.body#/access_token"}
        assert links["Refresh"]["requestBody"]["refresh_token"] == "$response.body#/refresh_token"


class TestServed:
    async def test_served_document(self, gateway):
        """GET /api/openapi.json answers the built document as JSON, valid OpenAPI 3.1."""
        resp = await gateway.get(PATH)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        doc = await resp.json()
        assert doc == build_document()
        validate(doc)
