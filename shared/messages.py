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
    #: The code's exchange record when this is the code's final answer: the gateway marks it delivered.
    record: str = ""


class LoginFailed(msgspec.Struct, frozen=True, kw_only=True, tag="login_failed.v1"):
    job_id: str
    status: int
    error: str
    error_description: str
    retry_after: int | None = None
    #: As ``LoginSucceeded.record``; empty when the code may still be used (the failure did not spend it).
    record: str = ""


Job = CodeExchangeJob
Reply = LoginSucceeded | LoginFailed

#: The one field of a stream entry that holds the msgpack-encoded message.
STREAM_FIELD = b"m"

job_decoder = msgspec.msgpack.Decoder(Job)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()

# --- Redis: the exactly-once record of one code exchange (auth workers only) ------------------------------------


class WechatSession(msgspec.Struct, frozen=True, kw_only=True, tag="wechat_session.v1"):
    """A jscode2session result, kept in the code's exchange record so that a retried job reuses it."""

    openid: str
    session_key: str
    unionid: str = ""


session_decoder = msgspec.msgpack.Decoder(WechatSession)

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


# --- Token validation: the user store's OAuth endpoints and the verifiers' pub/sub --------------------------------


class TokenRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 7662 introspection or RFC 7009 revocation with the caller's client credentials
    (``POST /internal/tokens/introspect``, ``POST /internal/tokens/revoke``)."""

    client_id: str
    client_secret: str
    token: str
    token_type_hint: str = ""


class Introspection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 7662's answer: ``{"active": false}`` alone, or the live token's claims."""

    active: bool
    scope: str | None = None
    client_id: str | None = None
    username: str | None = None
    token_type: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    sub: str | None = None
    aud: list[str] | None = None
    iss: str | None = None
    jti: str | None = None


class Jwk(msgspec.Struct, frozen=True, kw_only=True):
    """One RSA public key of ``/.well-known/jwks``; ``x5c`` holds its self-signed certificate (base64 DER)."""

    kty: str
    kid: str
    alg: str
    use: str
    n: str
    e: str
    x5c: list[str]


class JwkSet(msgspec.Struct, frozen=True, kw_only=True):
    keys: list[Jwk]


class OpenIdConfiguration(msgspec.Struct, frozen=True, kw_only=True):
    """``/.well-known/openid-configuration``; every URL is built from the configured ``ISSUER``."""

    issuer: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    introspection_endpoint: str
    revocation_endpoint: str
    end_session_endpoint: str
    response_types_supported: list[str]
    subject_types_supported: list[str]
    id_token_signing_alg_values_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    scopes_supported: list[str]
    claims_supported: list[str]


class RevokedToken(msgspec.Struct, frozen=True, kw_only=True):
    #: The token row's id: the ``jti`` of both its access and its refresh token.
    jti: str
    #: Unix time after which none of the row's tokens verifies anyway, so the denylist may forget it.
    exp: int


class TokensRevoked(msgspec.Struct, frozen=True, kw_only=True, tag="tokens_revoked.v1"):
    tokens: list[RevokedToken]


class SigningKeysChanged(msgspec.Struct, frozen=True, kw_only=True, tag="signing_keys_changed.v1"):
    """A user store saw a rotation or retirement; verifiers re-read the JWKS now rather than at expiry."""

    kids: list[str]


#: Published on ``Keys.token_events`` (msgpack), read by every ``shared.verifier.Verifier``.
TokenEvent = TokensRevoked | SigningKeysChanged
token_event_decoder = msgspec.msgpack.Decoder(TokenEvent)
