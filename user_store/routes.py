"""URL table of the user store."""

from __future__ import annotations

from aiohttp import web

from user_store import account_views, oauth, views
from user_store.metrics import metrics_view


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", views.healthz, name="healthz")
    app.router.add_get("/readyz", views.readyz, name="readyz")
    app.router.add_get("/metrics", metrics_view, name="metrics")
    app.router.add_get("/internal/applications/{client_id}", views.get_application, name="application")
    app.router.add_get(
        "/internal/applications/{client_id}/wechat-miniprogram",
        views.get_miniprogram_provider,
        name="miniprogram_provider",
    )
    app.router.add_post("/internal/logins/wechat-miniprogram", views.post_wechat_login, name="wechat_login")
    app.router.add_post("/internal/tokens/introspect", oauth.introspect, name="introspect")
    app.router.add_post("/internal/tokens/revoke", oauth.revoke, name="revoke")
    app.router.add_get("/internal/keys/jwks", oauth.jwks, name="jwks")
    app.router.add_get("/internal/openid-configuration", oauth.discovery, name="discovery")
    app.router.add_post("/internal/tokens/refresh", account_views.refresh, name="refresh")
    app.router.add_post("/internal/account/get-account", account_views.get_account, name="get_account")
    app.router.add_post("/internal/account/userinfo", account_views.userinfo, name="userinfo")
    app.router.add_post("/internal/account/get-user", account_views.get_user, name="get_user")
    app.router.add_post("/internal/account/get-users", account_views.get_users, name="get_users")
    app.router.add_post("/internal/account/update-user", account_views.update_user, name="update_user")
    app.router.add_post("/internal/account/logout", account_views.logout, name="logout")
