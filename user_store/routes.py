"""URL table of the user store."""

from __future__ import annotations

from aiohttp import web

from user_store.metrics import metrics_view
from user_store.views import (
    account,
    applications,
    avatars,
    content_safety,
    discovery,
    health,
    introspection,
    linking,
    logins,
    rights,
    token,
    wechat_data,
)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz, name="healthz")
    app.router.add_get("/readyz", health.readyz, name="readyz")
    app.router.add_get("/metrics", metrics_view, name="metrics")
    app.router.add_get("/internal/applications/{client_id}", applications.application_info, name="application")
    app.router.add_get(
        "/internal/applications/{client_id}/wechat-miniprogram",
        applications.miniprogram_provider,
        name="miniprogram_provider",
    )
    app.router.add_post("/internal/logins/wechat-miniprogram", logins.wechat_login, name="wechat_login")
    app.router.add_post("/internal/logins/wechat-miniprogram/batch", logins.wechat_logins, name="wechat_logins")
    app.router.add_post("/internal/logins/wechat-phone", logins.phone_login, name="phone_login")
    app.router.add_post("/internal/tokens/introspect", introspection.introspect, name="introspect")
    app.router.add_post("/internal/tokens/revoke", introspection.revoke, name="revoke")
    app.router.add_get("/internal/keys/jwks", discovery.jwks, name="jwks")
    app.router.add_get("/internal/openid-configuration", discovery.discovery, name="discovery")
    app.router.add_post("/internal/tokens/refresh", token.refresh, name="refresh")
    app.router.add_post("/internal/account/get-account", account.get_account, name="get_account")
    app.router.add_post("/internal/account/userinfo", account.userinfo, name="userinfo")
    app.router.add_post("/internal/account/get-user", account.get_user, name="get_user")
    app.router.add_post("/internal/account/get-users", account.get_users, name="get_users")
    app.router.add_post("/internal/account/update-user", account.update_user, name="update_user")
    app.router.add_post("/internal/account/logout", account.logout, name="logout")
    app.router.add_post("/internal/account/delete-account", rights.delete_account, name="delete_account")
    app.router.add_post("/internal/account/delete-user", rights.delete_user, name="delete_user")
    app.router.add_post("/internal/account/export-account", rights.export_account, name="export_account")
    app.router.add_post("/internal/avatars", avatars.upload, name="upload_avatar")
    app.router.add_get("/internal/avatars/{avatar_id}", avatars.get_avatar, name="avatar")
    app.router.add_post("/internal/wechat-data/decrypt", wechat_data.decrypt, name="decrypt_wechat_data")
    app.router.add_post("/internal/account/link-wechat", linking.link, name="link_wechat")
    app.router.add_post("/internal/account/unlink-wechat", linking.unlink, name="unlink_wechat")
    app.router.add_post("/internal/content-safety/subject", content_safety.subject, name="content_subject")
    app.router.add_post("/internal/avatar-reviews/trace", content_safety.record_trace, name="avatar_review_trace")
    app.router.add_post("/internal/avatar-reviews/discard", content_safety.discard, name="avatar_review_discard")
    app.router.add_post("/internal/wechat-push", content_safety.wechat_push, name="wechat_push")
