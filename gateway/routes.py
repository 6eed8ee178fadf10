"""URL table of the gateway: each public route and the view that answers it (``gateway/views/``)."""

from __future__ import annotations

from aiohttp import web

from gateway import openapi
from gateway.metrics import metrics_view
from gateway.views import account, avatars, discovery, health, introspection, token, wechat_data, wechat_push


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/login/oauth/access_token", token.access_token)
    app.router.add_post("/api/login/oauth/introspect", introspection.introspect)
    app.router.add_post("/api/login/oauth/revoke", introspection.revoke)
    app.router.add_post(token.REFRESH_PATH, token.refresh_token)
    for method, path, handler in (*account.ROUTES, *avatars.ROUTES, *wechat_data.ROUTES, *wechat_push.ROUTES):
        app.router.add_route(method, path, handler)
    app.router.add_get("/.well-known/jwks", discovery.jwks)
    app.router.add_get("/.well-known/openid-configuration", discovery.openid_configuration)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", metrics_view)
    openapi.setup_openapi(app)
