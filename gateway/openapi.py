"""The OpenAPI 3.1 document of the gateway's public routes, served at ``GET /api/openapi.json``.

Public means reachable without the internal credential: the Casdoor-compatible API, the OIDC documents, the health
probes and this document. ``INTERNAL_PATHS`` lists the rest; ``tests/test_openapi.py`` fails when a route is neither
documented here nor listed there. Success bodies are the wire Structs' own JSON Schema (``msgspec``), so they
cannot drift from what the views encode. Error bodies take the route's form (``middleware.render_error``): OAuth's
``{error, error_description}`` on ``/api/login/oauth/*`` and everywhere else, Casdoor's envelope on the account
routes (``account.ENVELOPE_PATHS``). The document has no ``servers``: its paths are relative to where it is served.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from gateway import appkeys
from gateway.views.account import ENVELOPE_PATHS
from shared.guard import MAX_FIELD_CHARS
from shared.messages import (
    MAX_AVATAR_BYTES,
    AccountExport,
    AvatarResult,
    CasdoorOrganization,
    CasdoorUser,
    ErrorBody,
    Introspection,
    JwkSet,
    OpenIdConfiguration,
    TokenResponse,
    UserInfo,
)

PATH = "/api/openapi.json"
#: Routes of the gateway that the document leaves out: ``/metrics`` answers only the internal credential.
INTERNAL_PATHS = frozenset({"/metrics"})

Doc = dict[str, Any]
_REF = "#/components/schemas/{name}"
_STRUCTS = (
    TokenResponse,
    Introspection,
    UserInfo,
    CasdoorUser,
    CasdoorOrganization,
    JwkSet,
    OpenIdConfiguration,
    AccountExport,
    AvatarResult,
)
_FIELD: Doc = {"type": "string", "maxLength": MAX_FIELD_CHARS}
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"


def _ref(name: str) -> Doc:
    return {"$ref": _REF.format(name=name)}


def _json_content(schema: Doc) -> Doc:
    return {_JSON: {"schema": schema}}


# --- Errors -------------------------------------------------------------------------------------------------------

_RETRY_AFTER: Doc = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}
#: Status -> why, for every error a route may answer. The input guard's 400/408/413 hold on every route.
_WHY = {
    400: "Bad input: a missing or malformed parameter, an unreadable body, a URL, header or body that is not UTF-8, "
    "JSON nested deeper than 32 levels, a parameter over 4096 characters. A request line or header over 8190 bytes "
    "is refused by the HTTP server itself, in plain text.",
    401: "No, unknown or wrong credentials.",
    403: "Not allowed.",
    404: "No such user (or avatar).",
    408: "The body did not arrive within BODY_READ_TIMEOUT.",
    409: "A name, email or phone already taken in the organization, or a WeChat identity linked to another user "
    "(naming no one).",
    413: "The body is larger than MAX_BODY_BYTES (upload-avatar: a file over 2 MB).",
    415: "A body that is neither a form nor JSON (upload-avatar: not multipart, or not a JPEG, PNG or WebP).",
    429: "A rate limit is spent (README: Rate limits).",
    502: "WeChat refused the application's credentials.",
    503: "A dependency (Redis, the user store, WeChat) is away, or the login queue is full.",
    504: "No auth worker answered within LOGIN_TIMEOUT.",
}
_GUARD = (400, 408, 413)
_ENVELOPE_ERRORS = (*_GUARD, 401, 429, 503)


def _error_content(schema: Doc, status: int) -> Doc:
    """A request aiohttp cannot parse (a request line or header over 8190 bytes, bytes that are not HTTP) is refused
    before any route is known, with the one fixed OAuth-shaped body of ``shared.guard.PARSER_ERROR_BODY``: a 400
    of an envelope route may have that shape too."""
    if status == 400 and schema != _ref("ErrorBody"):
        return _json_content({"anyOf": [schema, _ref("ErrorBody")]})
    return _json_content(schema)


def _oauth_error(status: int) -> Doc:
    response: Doc = {
        "description": _WHY[status] + " OAuth error JSON.",
        "content": _error_content(_ref("ErrorBody"), status),
    }
    headers: Doc = {}
    if status == 401:
        headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string", "const": 'Basic realm="OAuth2"'}}
    if status == 429:
        headers["Retry-After"] = {**_RETRY_AFTER, "required": True}
    if status in (503, 504):
        headers["Retry-After"] = _RETRY_AFTER
    if headers:
        response["headers"] = headers
    return response


def _envelope_error(status: int) -> Doc:
    response: Doc = {
        "description": _WHY[status] + ' Casdoor\'s envelope with status "error" (Casdoor itself answers HTTP 200).',
        "content": _error_content(_ref("ErrorEnvelope"), status),
    }
    headers: Doc = {}
    if status == 401:
        headers["WWW-Authenticate"] = {
            "required": True,
            "description": 'Bearer realm="minidoor", with error="invalid_token" when a token was presented.',
            "schema": {"type": "string", "pattern": '^Bearer realm="minidoor"'},
        }
    if status == 429:
        headers["Retry-After"] = {**_RETRY_AFTER, "required": True}
    if status == 503:
        headers["Retry-After"] = _RETRY_AFTER
    if headers:
        response["headers"] = headers
    return response


def _errors(path: str, statuses: Iterable[int]) -> Doc:
    kind = "Envelope" if path in ENVELOPE_PATHS else "OAuth"
    return {str(status): {"$ref": f"#/components/responses/{kind}{status}"} for status in sorted(set(statuses))}


def _envelope(data: Doc, *, data2: Doc | None = None) -> Doc:
    """Casdoor's ``{status, msg, sub, name, data, data2, data3}`` with ``status`` "ok" and a typed ``data``."""
    return {
        "type": "object",
        "required": ["status", "msg", "sub", "name", "data", "data2", "data3"],
        "properties": {
            "status": {"const": "ok"},
            "msg": {"type": "string"},
            "sub": {"type": "string"},
            "name": {"type": "string"},
            "data": data,
            "data2": data2 if data2 is not None else {"type": "null"},
            "data3": {"type": "null"},
        },
    }


# --- Parameters and bodies ----------------------------------------------------------------------------------------


def _query(name: str, description: str, schema: Doc | None = None) -> Doc:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _FIELD}


_CREDENTIAL_PARAMS = [
    _query("accessToken", "A bearer access token (Casdoor's parameter)."),
    _query("access_token", "A bearer access token; wins over the Authorization header."),
    _query("clientId", "The application's client id, with clientSecret: act as the application."),
    _query("clientSecret", "The application's client secret."),
]
_ACCOUNT_SECURITY: list[Doc] = [{"bearerAuth": []}, {"clientBasic": []}, {}]


def _form_body(properties: dict[str, str], *, required: Iterable[str] = (), json_too: bool = True) -> Doc:
    schema: Doc = {
        "type": "object",
        "properties": {name: {**_FIELD, "description": text} for name, text in properties.items()},
    }
    if required := list(required):
        schema["required"] = required
    content: Doc = {_FORM: {"schema": schema}}
    if json_too:
        content[_JSON] = {"schema": schema}
    return {"required": False, "content": content}


_LOGIN_FIELDS = {
    "tag": 'The mini-program branch: "wechat_miniprogram", or "wechat_miniprogram_phone" for phone sign-in.',
    "client_id": "The application's client id.",
    "code": "The code from wx.login(), unchanged; for phone sign-in the getPhoneNumber button's e.detail.code.",
    "login_code": "Phone sign-in only, optional: a wx.login() code whose WeChat identity is linked to the user "
    "(409 when another user has it).",
    "username": "A new user's name (Casdoor's alphabet), else wechat-<openid>.",
    "avatar": "An https:// avatar URL.",
    "client_secret": "Not needed by a mini program (a public client); checked on the refresh grant when sent.",
    "grant_type": 'Only "refresh_token", without tag: the refresh grant.',
    "refresh_token": "The refresh grant's refresh token.",
    "scope": "The refresh grant's scope: at most what was granted.",
}
_REFRESH_FIELDS = {
    "grant_type": 'Must be "refresh_token".',
    "refresh_token": "The refresh token; each works once.",
    "client_id": "The application's client id.",
    "client_secret": "Optional for a public client; checked when sent.",
    "scope": "At most the scope granted.",
}
_TOKEN_FIELDS = {
    "token": "The token to introspect or revoke (any length).",
    "token_type_hint": '"access_token" or "refresh_token".',
    "client_id": "The application's client id, when not sent with HTTP Basic.",
    "client_secret": "The application's client secret, when not sent with HTTP Basic.",
}
#: What the account links pass on: the token the login or refresh answered, as ``accessToken``, the parameter
#: Casdoor (and ``gateway.auth``) reads first.
_TOKEN_LINKS: Doc = {
    "GetAccount": {
        "operationId": "getAccount",
        "parameters": {"query.accessToken": "$response.body#/access_token"},
    },
    "GetUserinfo": {
        "operationId": "getUserinfo",
        "parameters": {"query.accessToken": "$response.body#/access_token"},
    },
    "UpdateUser": {
        "operationId": "updateUser",
        "parameters": {"query.accessToken": "$response.body#/access_token"},
    },
    "Logout": {
        "operationId": "postLogout",
        "parameters": {"query.accessToken": "$response.body#/access_token"},
    },
    # The client credentials are the backend's own (HTTP Basic), not the mini program's.
    "Introspect": {"operationId": "introspect", "requestBody": {"token": "$response.body#/access_token"}},
    "Revoke": {"operationId": "revoke", "requestBody": {"token": "$response.body#/refresh_token"}},
    "Refresh": {
        "operationId": "refreshToken",
        "requestBody": {
            "grant_type": "refresh_token",
            "refresh_token": "$response.body#/refresh_token",
            "client_id": "$request.body#/client_id",
        },
    },
}


def _token_response() -> Doc:
    return {
        "description": "Casdoor's token wrapper (snake_case); id_token is the access token, as in Casdoor.",
        "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
        "content": _json_content(_ref("TokenResponse")),
        "links": _TOKEN_LINKS,
    }


# --- Operations ---------------------------------------------------------------------------------------------------


def _oauth_operations() -> Doc:
    token_errors = (*_GUARD, 401, 403, 409, 415, 429, 502, 503, 504)
    return {
        "/api/login/oauth/access_token": {
            "post": {
                "operationId": "accessToken",
                "tags": ["oauth"],
                "summary": "Mini-program login (tag=wechat_miniprogram), phone sign-in (tag=wechat_miniprogram_phone), "
                "or the refresh_token grant",
                "description": "Parameters come from the URL query, then a form body (which wins), then HTTP Basic "
                "for client_id/client_secret, then a JSON body fills what is still empty (Casdoor's order). "
                "Rate limits: per client IP, and per wx.login() code.",
                "security": [{"clientBasic": []}, {}],
                "requestBody": _form_body(_LOGIN_FIELDS),
                "responses": {"200": _token_response(), **_errors("/api/login/oauth/access_token", token_errors)},
            }
        },
        "/api/login/oauth/refresh_token": {
            "post": {
                "operationId": "refreshToken",
                "tags": ["oauth"],
                "summary": "Casdoor's refresh endpoint: a new pair; the old one is revoked, a replay revokes the login",
                "security": [{"clientBasic": []}, {}],
                "requestBody": _form_body(_REFRESH_FIELDS),
                "responses": {
                    "200": _token_response(),
                    **_errors("/api/login/oauth/refresh_token", (*_GUARD, 401, 415, 429, 503)),
                },
            }
        },
        "/api/login/oauth/introspect": {
            "post": {
                "operationId": "introspect",
                "tags": ["oauth"],
                "summary": 'RFC 7662 introspection: {"active": false} for any token that is not live',
                "description": "Client authentication by HTTP Basic or client_id/client_secret in the form. Failed "
                "client authentications are rate limited per client_id and per IP.",
                "security": [{"clientBasic": []}, {}],
                "requestBody": _form_body(_TOKEN_FIELDS, json_too=False),
                "responses": {
                    "200": {
                        "description": "The token's claims, or active false.",
                        "content": _json_content(_ref("Introspection")),
                    },
                    **_errors("/api/login/oauth/introspect", (*_GUARD, 401, 415, 429, 503)),
                },
            }
        },
        "/api/login/oauth/revoke": {
            "post": {
                "operationId": "revoke",
                "tags": ["oauth"],
                "summary": "RFC 7009 revocation: 200 with no body, for unknown tokens too",
                "description": "400 unauthorized_client for another application's token. Rate limits as introspect.",
                "security": [{"clientBasic": []}, {}],
                "requestBody": _form_body(_TOKEN_FIELDS, json_too=False),
                "responses": {
                    "200": {"description": "Revoked, or nothing to revoke."},
                    **_errors("/api/login/oauth/revoke", (*_GUARD, 401, 415, 429, 503)),
                },
            }
        },
    }


def _account_operation(
    operation_id: str, summary: str, parameters: list[Doc], ok: Doc, statuses: Iterable[int], path: str
) -> Doc:
    return {
        "operationId": operation_id,
        "tags": ["account"],
        "summary": summary,
        "security": _ACCOUNT_SECURITY,
        "parameters": [*parameters, *_CREDENTIAL_PARAMS],
        "responses": {"200": ok, **_errors(path, (*_ENVELOPE_ERRORS, *statuses))},
    }


def _ok(description: str, schema: Doc, links: Doc | None = None) -> Doc:
    response: Doc = {"description": description, "content": _json_content(schema)}
    if links:
        response["links"] = links
    return response


def _account_operations() -> Doc:
    user = _ref("CasdoorUser")
    account_links = {
        "GetUser": {
            "operationId": "getUser",
            "parameters": {
                "query.id": "{$response.body#/data/owner}/{$response.body#/data/name}",
                "query.accessToken": "$request.query.accessToken",
            },
        },
        "GetUsers": {
            "operationId": "getUsers",
            "parameters": {
                "query.owner": "$response.body#/data/owner",
                "query.accessToken": "$request.query.accessToken",
            },
        },
    }
    who = [
        _query("id", "The user as owner/name."),
        _query("owner", "The organization, with one of userId, email or phone."),
        _query("userId", "The user's id (a UUID)."),
        _query("email", "The user's email."),
        _query("phone", "The user's phone."),
    ]
    page = [
        _query("owner", "The organization; default: the caller's."),
        _query(
            "p",
            "Page number from 1; 0 or absent: every user.",
            {"type": "integer", "minimum": 0, "maximum": 999_999_999},
        ),
        _query(
            "pageSize", "Users per page; 0 or absent: every user.", {"type": "integer", "minimum": 0, "maximum": 1000}
        ),
    ]
    target = [
        _query("id", "The target as owner/name; default: the body's owner and name, else the caller."),
        _query("owner", "The organization, with userId."),
        _query("userId", "The target's id (a UUID)."),
        _query("columns", "Comma-separated fields to write (camelCase or snake_case); default: those in the body."),
    ]
    hint = _query("id_token_hint", "An ID token of the login to end, instead of a bearer token.")
    logout_ok = _ok("The login is revoked; data: owner/name of its user.", _envelope({"type": "string"}))
    userinfo_ok = _ok("OIDC claims, raw JSON (no envelope), as in Casdoor.", _ref("UserInfo"))
    logout = _account_operation(
        "getLogout", "End the login of the bearer token, or of id_token_hint", [hint], logout_ok, (), "/api/logout"
    )
    post_logout = {
        **logout,
        "operationId": "postLogout",
        "requestBody": _credentials_form({"id_token_hint": hint["description"]}),
    }
    userinfo = _account_operation("getUserinfo", "The bearer's OIDC claims", [], userinfo_ok, (), "/api/userinfo")
    post_userinfo = {**userinfo, "operationId": "postUserinfo", "requestBody": _credentials_form({})}
    return {
        "/api/get-account": {
            "get": _account_operation(
                "getAccount",
                "The bearer's user (data) and organization (data2)",
                [],
                _ok("The account.", _envelope(user, data2=_ref("CasdoorOrganization")), account_links),
                (404,),
                "/api/get-account",
            )
        },
        "/api/userinfo": {"get": userinfo, "post": post_userinfo},
        "/api/get-user": {
            "get": _account_operation(
                "getUser",
                "One user, for the application, an organization admin or the user itself",
                who,
                _ok("The user.", _envelope(user)),
                (403, 404),
                "/api/get-user",
            )
        },
        "/api/get-users": {
            "get": _account_operation(
                "getUsers",
                "The users of an organization, for the application or an organization admin",
                page,
                _ok(
                    "The users; data2 is the total when paged.",
                    _envelope({"type": "array", "items": user}, data2={"type": ["integer", "null"]}),
                ),
                (403, 404),
                "/api/get-users",
            )
        },
        "/api/update-user": {
            "post": {
                **_account_operation(
                    "updateUser",
                    "Change a user: only the fields in columns, else in the body",
                    target,
                    _ok(
                        "data: Affected, or Unaffected when nothing changed.",
                        _envelope({"enum": ["Affected", "Unaffected"]}),
                    ),
                    (403, 404, 409),
                    "/api/update-user",
                ),
                "description": "Rate limited per user (the bearer token's sub).",
                "requestBody": {
                    "required": True,
                    "description": "A Casdoor user object, whole or partial; read as JSON whatever the Content-Type.",
                    "content": _json_content({"type": "object", "properties": _USER_FIELDS}),
                },
            }
        },
        "/api/logout": {"get": logout, "post": post_logout},
        "/api/link-wechat": {
            "post": {
                **_account_operation(
                    "linkWechat",
                    "Link the WeChat identity of a fresh wx.login() code to the bearer's account",
                    [],
                    _ok("data: the AppID and whether the identity is new to the account.", _envelope(_LINKED)),
                    (403, 409, 415, 502, 504),
                    "/api/link-wechat",
                ),
                "description": "The code is exchanged by an auth worker, once (a replay is refused). Rate limits: "
                "per client IP and per code, as a login.",
                "requestBody": _credentials_form({"code": "A fresh code from wx.login(), unchanged."}),
            }
        },
        "/api/unlink-wechat": {
            "post": {
                **_account_operation(
                    "unlinkWechat",
                    "Remove the bearer's WeChat identity of an AppID; never the account's last way to sign in",
                    [],
                    _ok("data: the AppID, linked false.", _envelope(_LINKED)),
                    (404, 415),
                    "/api/unlink-wechat",
                ),
                "description": "400 when it is the last way to sign in (no other WeChat identity, phone or password).",
                "requestBody": _credentials_form({"appid": "The AppID; default: the token's application's."}),
            }
        },
    }


def _rights_operations() -> Doc:
    """Users' rights: deletion (by the user, or Casdoor's delete-user by an admin) and export."""
    affected = _envelope({"enum": ["Affected", "Unaffected"]})
    delete_account = _account_operation(
        "deleteAccount",
        "Delete the bearer's own account: every token revoked, its data erased",
        [],
        _ok("data: Affected. Every token of the user is revoked on every gateway within a second.", affected),
        (403, 502, 504),
        "/api/delete-account",
    )
    delete_account["description"] = (
        "Needs the user's access token and a second proof: code, a fresh wx.login() code (exchanged with WeChat as a"
        " login of the same user), or password, in the form body. Rate limited per user (the bearer token's sub)."
    )
    delete_account["requestBody"] = _credentials_form(
        {"code": "A fresh code from wx.login(), unchanged.", "password": "The account's password, instead of code."}
    )
    delete_user = _account_operation(
        "deleteUser",
        "Casdoor's delete-user: the application or an organization admin erases a user",
        [_query("id", "The user as owner/name; default: the body's owner and name.")],
        _ok("data: Affected, or Unaffected when there is no such user.", affected),
        (403,),
        "/api/delete-user",
    )
    delete_user["requestBody"] = {
        "required": False,
        "description": "A Casdoor user object (owner and name name the target); read as JSON whatever the type.",
        "content": _json_content({"type": "object", "properties": _USER_FIELDS}),
    }
    export = _account_operation(
        "exportAccount",
        "Everything held about the bearer's user, as JSON (no secret)",
        [],
        _ok("data: the profile, WeChat identities, applications and recent events.", _envelope(_ref("AccountExport"))),
        (404,),
        "/api/export-account",
    )
    export["description"] = "Rate limited per user (the bearer token's sub)."
    return {
        "/api/delete-account": {"post": delete_account},
        "/api/delete-user": {"post": delete_user},
        "/api/export-account": {"get": export},
    }


_LINKED: Doc = {
    "type": "object",
    "required": ["appid", "linked"],
    "properties": {"appid": {"type": "string"}, "linked": {"type": "boolean"}},
}


_USER_FIELDS: Doc = {
    **{name: {"type": "string"} for name in ("owner", "name", "displayName", "avatar", "email", "phone", "type")},
    "countryCode": {"type": "string", "description": "Two capitals, e.g. CN."},
    "password": {"type": "string", "description": '"***" or "" leaves it unchanged.'},
    **{name: {"type": "boolean"} for name in ("isAdmin", "isForbidden", "isDeleted")},
    "properties": {"type": "object", "additionalProperties": {"type": "string"}},
}


def _credentials_form(extra: dict[str, str]) -> Doc:
    fields = {
        "accessToken": "A bearer access token.",
        "access_token": "A bearer access token.",
        "clientId": "The application's client id.",
        "clientSecret": "The application's client secret.",
        **extra,
    }
    return _form_body(fields, json_too=False)


def _public_operations() -> Doc:
    cached = {"304": {"description": "Not modified (If-None-Match matched the ETag)."}}
    unavailable = _errors("/.well-known/jwks", (*_GUARD, 503))
    return {
        "/.well-known/jwks": {
            "get": {
                "operationId": "jwks",
                "tags": ["oidc"],
                "summary": "Every key that still verifies a live token",
                "responses": {"200": _ok("The JWK set.", _ref("JwkSet")), **cached, **unavailable},
            }
        },
        "/.well-known/openid-configuration": {
            "get": {
                "operationId": "openidConfiguration",
                "tags": ["oidc"],
                "summary": "OpenID discovery; URLs built from ISSUER",
                "responses": {
                    "200": _ok("The discovery document.", _ref("OpenIdConfiguration")),
                    **cached,
                    **unavailable,
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "Alive: the process answers",
                "responses": {"200": _ok("Alive.", _STATUS), **_errors("/healthz", _GUARD)},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "Ready while a login can be served: Redis and the user store answer",
                "responses": {
                    "200": _ok("Ready.", _STATUS),
                    "503": _ok("Redis or the user store does not answer: `reasons` says which.", _STATUS),
                    **_errors("/readyz", _GUARD),
                },
            }
        },
        PATH: {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {"200": _ok("OpenAPI 3.1.", {"type": "object"}), **_errors(PATH, _GUARD)},
            }
        },
    }


def _wechat_data_operations() -> Doc:
    bearer = [_query("access_token", "A bearer access token; wins over the Authorization header.")]
    avatar_file: Doc = {
        "type": "object",
        "required": ["avatar"],
        "properties": {
            "avatar": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "maxLength": MAX_AVATAR_BYTES,
                "description": "The image file (field 'file' is read too): JPEG, PNG or WebP, at most 2 MB.",
            }
        },
    }
    encrypted = {
        "encryptedData": "The encryptedData the mini program received (base64).",
        "iv": "Its iv (base64).",
    }
    image = {"schema": {"type": "string", "contentMediaType": "image/*"}}
    return {
        "/api/upload-avatar": {
            "post": {
                "operationId": "uploadAvatar",
                "tags": ["account"],
                "summary": "Upload the bearer's avatar; it becomes the user's avatar URL",
                "description": "Decoded and re-encoded (metadata stripped, at most 512x512 pixels). A non-image, a "
                "polyglot, a decompression bomb or a file over 2 MB is refused. Rate limited per user.",
                "security": [{"bearerAuth": []}],
                "parameters": bearer,
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": avatar_file}}},
                "responses": {
                    "200": _ok(
                        "data: the avatar's public URL; data2: what was stored.",
                        _envelope({"type": "string", "format": "uri"}, data2=_ref("AvatarResult")),
                    ),
                    **_errors("/api/upload-avatar", (*_ENVELOPE_ERRORS, 415)),
                },
            }
        },
        "/api/decrypt-wechat-data": {
            "post": {
                "operationId": "decryptWechatData",
                "tags": ["account"],
                "summary": "Decrypt a legacy encryptedData with the session_key of the bearer's login",
                "description": "AES-128-CBC; the watermark appid must be the application's mini program and its "
                "timestamp within WECHAT_DATA_MAX_AGE. A 400 saying 'stale' means the session_key was rotated: log "
                "in again. Rate limited per user.",
                "security": [{"bearerAuth": []}],
                "parameters": [
                    *bearer,
                    _query("encryptedData", encrypted["encryptedData"]),
                    _query("iv", encrypted["iv"]),
                ],
                "requestBody": _form_body(encrypted, required=("encryptedData", "iv")),
                "responses": {
                    "200": _ok(
                        "data: the decrypted object (phoneNumber or userInfo fields, and its watermark).",
                        _envelope({"type": "object"}),
                    ),
                    **_errors("/api/decrypt-wechat-data", (*_ENVELOPE_ERRORS, 403)),
                },
            }
        },
        "/avatars/{name}": {
            "get": {
                "operationId": "avatar",
                "tags": ["oidc"],
                "summary": "An uploaded avatar, at the URL upload-avatar answered",
                "description": "Immutable: a new upload gets a new URL. Rate limited per IP.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}\\.(jpg|png|webp)$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The image.",
                        "headers": {
                            "Cache-Control": {"schema": {"const": "public, max-age=31536000, immutable"}},
                            "ETag": {"schema": {"type": "string"}},
                            "X-Content-Type-Options": {"schema": {"const": "nosniff"}},
                        },
                        "content": {"image/jpeg": image, "image/png": image, "image/webp": image},
                    },
                    "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                    **_errors("/avatars/{name}", (*_GUARD, 404, 429, 503)),
                },
            }
        },
        "/api/wechat-push/{appid}": _wechat_push(),
    }


def _wechat_push() -> Doc:
    """WeChat's message push: its URL check (GET) and its events (POST), signed with the mini program's Token."""
    params = [
        {"name": "appid", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}},
        _query("signature", "sha1 of the sorted Token, timestamp and nonce (hex)."),
        _query("timestamp", "Unix seconds; refused when more than 5 minutes off."),
        _query("nonce", "WeChat's random number."),
    ]
    text = {"text/plain": {"schema": {"type": "string"}}}
    errors = _errors("/api/wechat-push/{appid}", (*_GUARD, 403, 404, 429, 503))
    doc = {
        "tags": ["content safety"],
        "description": "The URL make set-content-safety prints for WeChat's console (plain-text mode, JSON). Only "
        "wxa_media_check events are acted on: an avatar's content-security verdict. Rate limited per IP.",
        "parameters": params,
    }
    return {
        "get": {
            **doc,
            "operationId": "wechatPushCheck",
            "summary": "WeChat's check of the message-push URL: answers echostr when signed",
            "parameters": [*params, _query("echostr", "Echoed back when the signature holds.")],
            "responses": {"200": {"description": "The echostr.", "content": text}, **errors},
        },
        "post": {
            **doc,
            "operationId": "wechatPush",
            "summary": "An event WeChat pushes (an avatar's content-security verdict)",
            "requestBody": {"required": True, "content": _json_content({"type": "object"})},
            "responses": {"200": {"description": "success", "content": text}, **errors},
        },
    }


_STATUS: Doc = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["ok", "unavailable"]},
        "reasons": {
            "type": "object",
            "properties": {"redis": {"type": "string"}, "user_store": {"type": "string"}},
            "additionalProperties": False,
        },
    },
}


def _components() -> Doc:
    _, schemas = msgspec.json.schema_components((*_STRUCTS, ErrorBody), ref_template=_REF)
    schemas["ErrorEnvelope"] = {
        "type": "object",
        "required": ["status", "msg", "sub", "name", "data", "data2", "data3"],
        "properties": {
            "status": {"const": "error"},
            "msg": {"type": "string"},
            **{key: {"type": "string"} for key in ("sub", "name")},
            **{key: {"type": "null"} for key in ("data", "data2", "data3")},
        },
    }
    return {
        "schemas": schemas,
        "responses": {
            **{f"OAuth{status}": _oauth_error(status) for status in _WHY},
            **{f"Envelope{status}": _envelope_error(status) for status in _WHY},
        },
        "securitySchemes": {
            "clientBasic": {"type": "http", "scheme": "basic", "description": "client_id:client_secret"},
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An access token.",
            },
        },
    }


def build_document() -> Doc:
    """The whole document, as a dict; pure (no I/O), so ``create_app`` builds it once."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "minidoor gateway",
            "version": "1",
            "summary": "Login backend for WeChat Mini Programs, compatible with Casdoor's API",
            "description": "Every response carries X-Request-Id. Rate limits answer 429 with Retry-After.",
        },
        "tags": [
            {"name": "oauth", "description": "OAuth JSON, errors as {error, error_description}."},
            {"name": "account", "description": "Casdoor's envelope, errors included; userinfo's success is raw."},
            {"name": "oidc", "description": "Public, cacheable documents (ETag)."},
            {"name": "operations", "description": "Probes and this document."},
        ],
        "paths": {
            **_oauth_operations(),
            **_account_operations(),
            **_rights_operations(),
            **_wechat_data_operations(),
            **_public_operations(),
        },
        "components": _components(),
    }


def setup_openapi(app: web.Application) -> None:
    """Build the document once and serve it at ``PATH``."""
    app[appkeys.OPENAPI] = msgspec.json.encode(build_document())
    app.router.add_get(PATH, openapi_json)


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``."""
    return web.Response(body=request.app[appkeys.OPENAPI], content_type="application/json")
