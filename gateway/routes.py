from __future__ import annotations

from aiohttp import web

from gateway import account, oauth, openapi, refresh, views
from gateway.metrics import metrics_view


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/login/oauth/access_token", views.access_token)
    app.router.add_post("/api/login/oauth/introspect", oauth.introspect)
    app.router.add_post("/api/login/oauth/revoke", oauth.revoke)
    app.router.add_post(refresh.REFRESH_PATH, refresh.refresh_token)
    for method, path, handler in account.ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/.well-known/jwks", oauth.jwks)
    app.router.add_get("/.well-known/openid-configuration", oauth.openid_configuration)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", metrics_view)
    openapi.setup_openapi(app)
