from __future__ import annotations

from aiohttp import web

from gateway import views


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/login/oauth/access_token", views.access_token)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
