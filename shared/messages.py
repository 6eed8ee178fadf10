"""The wire contract between processes: Redis stream messages and the user store's internal API.

Schema evolution follows msgspec's rules: a new field gets a default, a field never changes type, and a tag is
never reused; a new incompatible shape is a new tag (``...v2``) decoded beside the old one until it drains.
Inter-service decoders must not forbid unknown fields, so an old reader skips what a newer writer added.
"""

from __future__ import annotations

import msgspec

# --- Redis streams: gateway -> auth worker -> gateway ------------------------------------------------------------


class CodeExchangeJob(msgspec.Struct, frozen=True, kw_only=True, tag="code_exchange.v1"):
    """Exchange one wx.login() code for a minidoor login, and reply on ``reply_to``."""

    job_id: str
    request_id: str
    client_id: str
    code: str
    reply_to: str
    #: Unix time (seconds) after which nobody waits for the answer any more.
    deadline: float
    username: str = ""
    avatar: str = ""


class TokenResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Casdoor's snake_case OAuth token wrapper, what mini programs written from Casdoor's docs read."""

    access_token: str
    id_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    scope: str


class LoginSucceeded(msgspec.Struct, frozen=True, kw_only=True, tag="login_succeeded.v1"):
    job_id: str
    token: TokenResponse


class LoginFailed(msgspec.Struct, frozen=True, kw_only=True, tag="login_failed.v1"):
    job_id: str
    status: int
    error: str
    error_description: str
    retry_after: int | None = None


Job = CodeExchangeJob
Reply = LoginSucceeded | LoginFailed

#: The one field of a stream entry that holds the msgpack-encoded message.
STREAM_FIELD = b"m"

job_decoder = msgspec.msgpack.Decoder(Job)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()

# --- The user store's internal HTTP API (JSON) --------------------------------------------------------------------


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """OAuth-style error body, used by the public gateway and the internal user store alike."""

    error: str
    error_description: str = ""


class ApplicationInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway needs to know about a client: no secrets."""

    client_id: str
    name: str
    organization: str
    enable_sign_up: bool
    #: AppID of the application's first WeChat mini-program provider, "" when it has none.
    miniprogram_appid: str = ""


class MiniProgramProvider(msgspec.Struct, frozen=True, kw_only=True):
    """The WeChat credentials an auth worker needs to call jscode2session for one application."""

    client_id: str
    provider: str
    appid: str
    secret: str


class WechatLogin(msgspec.Struct, frozen=True, kw_only=True):
    """A jscode2session result to turn into a user and tokens (POST /internal/logins/wechat-miniprogram)."""

    client_id: str
    appid: str
    openid: str
    session_key: str
    unionid: str = ""
    username: str = ""
    avatar: str = ""


class LoginResult(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    user_name: str
    created: bool
    token: TokenResponse
