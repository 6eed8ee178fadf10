"""The wire contract between processes: Redis stream messages and the user store's internal API.

Schema evolution follows msgspec's rules: a new field gets a default, a field never changes type, and a tag is
never reused; a new incompatible shape is a new tag (``...v2``) decoded beside the old one until it drains.
Inter-service decoders must not forbid unknown fields, so an old reader skips what a newer writer added.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.errors import MinidoorError, Param

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
    #: The mini program's IP as the gateway saw it, for the audit log; empty from gateways older than it.
    client_ip: str = ""


class PhoneLoginJob(msgspec.Struct, frozen=True, kw_only=True, tag="phone_login.v1"):
    """Sign in with a ``getPhoneNumber`` code (``tag=wechat_miniprogram_phone``), and reply on ``reply_to``; with a
    ``login_code`` (a wx.login() code) the caller's WeChat identity is linked to that user in the same step. Each
    code is exchanged at most once, through its own exchange record, like ``CodeExchangeJob``'s."""

    job_id: str
    request_id: str
    client_id: str
    code: str
    reply_to: str
    deadline: float
    login_code: str = ""
    client_ip: str = ""


class LinkWechatJob(msgspec.Struct, frozen=True, kw_only=True, tag="link_wechat.v1"):
    """Link the WeChat identity behind a fresh wx.login() ``code`` to ``user_id`` (the bearer token's ``sub``, which
    the gateway verified; its ``aud`` is ``client_id``), and reply on ``reply_to``. The code goes through the same
    exchange record as a login with it: exchanged at most once, whichever route presents it."""

    job_id: str
    request_id: str
    client_id: str
    user_id: str
    code: str
    reply_to: str
    deadline: float
    client_ip: str = ""


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
    #: The description's English template and its fields (``MinidoorError.message``, ``.params``), which the gateway
    #: translates; empty for a message without fields, and from workers older than them: the description then is its
    #: own template.
    message: str = ""
    params: dict[str, Param] = {}

    @classmethod
    def of(cls, job_id: str, exc: MinidoorError, *, record: str = "") -> LoginFailed:
        """The wire form of ``exc`` as the answer to job ``job_id``."""
        return cls(
            job_id=job_id,
            status=exc.status,
            error=exc.error,
            error_description=exc.description,
            retry_after=exc.retry_after,
            record=record,
            message=exc.message if exc.params else "",
            params=exc.params,
        )


class LoginSucceededSealed(msgspec.Struct, frozen=True, kw_only=True, tag="login_succeeded_sealed.v1"):
    """``LoginSucceeded`` with its ``TokenResponse`` (msgpack) sealed under ``STREAM_SEAL_KEY``
    (``shared/streamseal.py``): what a worker with that key writes to reply streams and exchange records."""

    job_id: str
    sealed: bytes
    record: str = ""


class WechatLinked(msgspec.Struct, frozen=True, kw_only=True, tag="wechat_linked.v1"):
    """A ``LinkWechatJob``'s success: the identity of ``appid`` is the user's (``linked`` False: it already was)."""

    job_id: str
    appid: str
    linked: bool
    record: str = ""


class ContentCheckJob(msgspec.Struct, frozen=True, kw_only=True, tag="content_check.v1"):
    """Have WeChat's content security screen what ``user_id`` (of ``client_id``'s mini program) submits, and reply on
    ``reply_to`` with ``ContentChecked``: a display name (``kind`` "name", ``text``) through ``wxa/msg_sec_check``,
    whose verdict comes back at once, or an uploaded avatar (``kind`` "avatar", ``media_url``) through
    ``wxa/media_check_async``, whose verdict WeChat pushes later (``trace_id`` names it)."""

    job_id: str
    request_id: str
    client_id: str
    user_id: str
    kind: str
    reply_to: str
    deadline: float
    text: str = ""
    media_url: str = ""
    client_ip: str = ""


#: WeChat content security's verdicts; only a pass lets content through ("review" means WeChat is unsure).
PASS = "pass"
VERDICTS = frozenset({PASS, "risky", "review"})


class ContentChecked(msgspec.Struct, frozen=True, kw_only=True, tag="content_checked.v1"):
    """A ``ContentCheckJob``'s answer: WeChat's ``suggest`` ("pass", "risky", "review") and ``label`` for a name;
    "submitted" and the ``trace_id`` its pushed verdict will carry for an avatar."""

    job_id: str
    verdict: str
    label: int = 0
    trace_id: str = ""
    record: str = ""


Job = CodeExchangeJob | PhoneLoginJob | LinkWechatJob | ContentCheckJob
Reply = LoginSucceeded | LoginFailed | LoginSucceededSealed | WechatLinked | ContentChecked

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


class WechatSessionSealed(msgspec.Struct, frozen=True, kw_only=True, tag="wechat_session_sealed.v1"):
    """``WechatSession`` (msgpack) sealed under ``STREAM_SEAL_KEY``: no session_key in clear in Redis."""

    sealed: bytes


session_decoder = msgspec.msgpack.Decoder(WechatSession | WechatSessionSealed)

# --- The user store's internal HTTP API (JSON) --------------------------------------------------------------------


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """OAuth-style error body, used by the public gateway and the internal user store alike. The user store adds the
    description's template and fields (``MinidoorError.message``, ``.params``) for the gateway to translate; the
    gateway's own bodies leave them out."""

    error: str
    error_description: str = ""
    message: str = ""
    params: dict[str, Param] = {}


class ApplicationInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway needs to know about a client: no secrets."""

    client_id: str
    name: str
    organization: str
    enable_sign_up: bool
    #: AppID of the application's first WeChat mini-program provider, "" when it has none.
    miniprogram_appid: str = ""
    #: Display names and avatars its users submit pass WeChat's content security first (``make set-content-safety``).
    content_safety: bool = False


class MiniProgramProvider(msgspec.Struct, frozen=True, kw_only=True):
    """The WeChat credentials an auth worker needs to call jscode2session for one application."""

    client_id: str
    provider: str
    appid: str
    secret: str
    #: As ``ApplicationInfo.content_safety``.
    content_safety: bool = False


class WechatLogin(msgspec.Struct, frozen=True, kw_only=True):
    """A jscode2session result to turn into a user and tokens (POST /internal/logins/wechat-miniprogram)."""

    client_id: str
    appid: str
    openid: str
    session_key: str
    unionid: str = ""
    username: str = ""
    avatar: str = ""


class PhoneLogin(msgspec.Struct, frozen=True, kw_only=True):
    """A phone number WeChat vouched for (getuserphonenumber, its watermark checked), to sign in the organization's
    user with it (POST /internal/logins/wechat-phone -> ``LoginResult``); with ``openid`` (from the job's
    ``login_code``) that WeChat identity is linked to the user, or refused with 409 if another user has it."""

    client_id: str
    appid: str
    #: Digits without the country code (WeChat's ``purePhoneNumber``), and the country code's digits ("86").
    phone: str
    country_code: str
    openid: str = ""
    unionid: str = ""
    session_key: str = ""


class WechatLink(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/link-wechat`` -> ``LinkResult``: a jscode2session result for ``user_id`` (409 when
    another user has that identity)."""

    client_id: str
    user_id: str
    appid: str
    openid: str
    session_key: str
    unionid: str = ""


class UnlinkWechat(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/unlink-wechat`` -> ``LinkResult``: remove the caller's identity of ``appid`` (default:
    the AppID of the caller's application), unless it is their last way to sign in (400)."""

    credentials: Credentials
    appid: str = ""


class LinkResult(msgspec.Struct, frozen=True, kw_only=True):
    appid: str
    linked: bool


class LoginResult(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    user_name: str
    created: bool
    token: TokenResponse


# The user store's batch of logins (``auth_worker/user_store_logins.py``): the logins a worker's jobs reach in one turn
# of its loop go as one request, each keeping its own outcome: a batch never fails a login for another's fault.


class WechatLogins(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/logins/wechat-miniprogram/batch`` -> ``LoginOutcomes``, in the same order."""

    logins: list[WechatLogin]
    #: Per login, for the audit rows and the log lines, as the headers carry them for one login.
    request_ids: list[str] = msgspec.field(default_factory=list)
    client_ips: list[str] = msgspec.field(default_factory=list)


class LoginOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One login of a batch: its ``LoginResult``, or the error it would have answered alone (``ErrorBody`` and its
    HTTP status, ``Retry-After`` as ``retry_after``)."""

    result: LoginResult | None = None
    status: int = 200
    error: ErrorBody | None = None
    retry_after: int | None = None


class LoginOutcomes(msgspec.Struct, frozen=True, kw_only=True):
    outcomes: list[LoginOutcome]


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
    #: Which kind of token this is, ``access`` or ``refresh`` (both are JWTs of ``token_type`` Bearer): a resource
    #: server that sends no ``token_type_hint`` must accept only ``access``.
    token_use: str | None = None


class Jwk(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One public key of ``/.well-known/jwks``: RSA (``n``, ``e``) or EC (``crv``, ``x``, ``y``), as its ``kty``
    says; the other type's members are left out. ``x5c`` holds its self-signed certificate (base64 DER)."""

    kty: str
    kid: str
    alg: str
    use: str
    n: str = ""
    e: str = ""
    crv: str = ""
    x: str = ""
    y: str = ""
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


# --- The account API (Casdoor's /api/get-account, /api/update-user, ...): gateway -> user store -------------------


class Credentials(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the caller of an account endpoint presented, passed on unchecked: the user store decides. A bearer
    access token wins over client credentials, as in Casdoor."""

    access_token: str = ""
    client_id: str = ""
    client_secret: str = ""


class UserQuery(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/{get-account,userinfo,get-user,get-users}``: who asks, and which user(s)."""

    credentials: Credentials
    #: ``owner/name``; else ``owner`` with one of ``user_id``, ``email`` or ``phone`` (get-user).
    id: str = ""
    owner: str = ""
    user_id: str = ""
    email: str = ""
    phone: str = ""
    #: get-users: page number from 1 and its size; 0 = every user.
    page: int = 0
    page_size: int = 0


class UserUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/update-user``: the target (``id``, else ``owner`` + ``user_id``, else the body's
    ``owner`` + ``name``, else the caller), the optional ``columns`` as received, and the JSON body."""

    credentials: Credentials
    user: dict[str, Any]
    id: str = ""
    owner: str = ""
    user_id: str = ""
    columns: str = ""


class LogoutRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/logout``: revokes the login of ``id_token_hint``, else of the bearer token."""

    credentials: Credentials
    id_token_hint: str = ""


class RefreshRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/tokens/refresh`` -> ``TokenResponse``: the refresh_token grant (OAuth errors)."""

    client_id: str
    refresh_token: str
    #: Optional for a public client (a mini program); checked when given.
    client_secret: str = ""
    scope: str = ""


class CasdoorUser(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A user in Casdoor's JSON shape (what ``get-account``, ``get-user`` and the SDKs read); ``password`` is
    ``"***"`` when one is set, else ``""``, never the hash."""

    owner: str
    name: str
    id: str
    created_time: str
    updated_time: str
    type: str
    password: str
    password_type: str
    display_name: str
    avatar: str
    permanent_avatar: str
    email: str
    email_verified: bool
    phone: str
    country_code: str
    signup_application: str
    is_admin: bool
    is_forbidden: bool
    is_deleted: bool
    #: The WeChat openid, as Casdoor's ``wechat`` column.
    wechat: str
    properties: dict[str, str]
    tag: str = ""
    first_name: str = ""
    last_name: str = ""
    roles: list[Any] = msgspec.field(default_factory=list)
    permissions: list[Any] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)


class CasdoorOrganization(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An organization in Casdoor's JSON shape (``get-account``'s ``data2``)."""

    owner: str
    name: str
    created_time: str
    display_name: str
    default_avatar: str
    password_type: str
    website_url: str = ""
    favicon: str = ""
    country_codes: list[str] = msgspec.field(default_factory=list)


class Account(msgspec.Struct, frozen=True, kw_only=True):
    user: CasdoorUser
    organization: CasdoorOrganization


class UserList(msgspec.Struct, frozen=True, kw_only=True):
    users: list[CasdoorUser]
    #: Every matching user, whatever the page.
    total: int


class UserInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """OIDC userinfo claims; empty ones are left out, as Casdoor does."""

    sub: str
    iss: str
    aud: str
    preferred_username: str = ""
    name: str = ""
    picture: str = ""
    email: str = ""
    phone: str = ""


class UpdateResult(msgspec.Struct, frozen=True, kw_only=True):
    affected: bool


class LogoutResult(msgspec.Struct, frozen=True, kw_only=True):
    #: ``owner/name`` of the user logged out.
    user: str
    revoked: int


# --- Users' rights (deletion, export): gateway -> user store --------------------------------------------------


class DeleteAccountRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/delete-account``: the bearer's own account, with a second proof that it is the user
    at the keyboard: ``proof_token``, the access token of a login made moments ago with a fresh wx.login() code (the
    gateway exchanged it through the job stream), or the user's ``password``."""

    credentials: Credentials
    proof_token: str = ""
    password: str = ""


class DeleteUserRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/account/delete-user``: Casdoor's delete-user, for the application or an organization admin;
    the target is ``id`` (owner/name), else the body's ``owner`` and ``name``."""

    credentials: Credentials
    id: str = ""
    owner: str = ""
    name: str = ""


class DeletionResult(msgspec.Struct, frozen=True, kw_only=True):
    #: False when there was no such user (Casdoor's "Unaffected").
    affected: bool
    #: Token rows revoked, WeChat identities erased.
    revoked: int = 0
    identities: int = 0


class ExportedIdentity(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A WeChat identity as the export shows it: never its session_key."""

    appid: str
    openid: str
    unionid: str
    created_time: str
    updated_time: str


class ExportedApplication(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    client_id: str
    first_sign_in: str
    last_sign_in: str
    live_logins: int


class ExportedEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An audit-log event about the user: a sign-in (``login``), a profile change, a logout, ..."""

    time: str
    action: str
    outcome: str
    application: str
    client_id: str
    client_ip: str
    details: dict[str, Any]


class AccountExport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``POST /internal/account/export-account``: everything minidoor holds about the caller, secrets excluded (no
    password hash, session_key or token)."""

    exported_time: str
    user: CasdoorUser
    organization: str
    identities: list[ExportedIdentity]
    applications: list[ExportedApplication]
    #: The latest audit events about the user, newest first (at most ``EXPORT_EVENTS``).
    events: list[ExportedEvent]


# --- Redis stream: audit events from processes without a database -> user store ---------------------------------


# --- Avatars and legacy encryptedData (user store's /internal/avatars, /internal/wechat-data) -----------------


#: The largest avatar file an upload may carry (the gateway refuses more before the user store sees it).
MAX_AVATAR_BYTES = 2 * 1024 * 1024


class AvatarUpload(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/avatars`` -> ``AvatarResult``: the bearer's new avatar, as uploaded (the user store decodes,
    checks and re-encodes it). ``content`` is base64 on the JSON wire."""

    credentials: Credentials
    content: bytes


class AvatarResult(msgspec.Struct, frozen=True, kw_only=True):
    """The stored avatar: its public URL (now the user's ``avatar``, unless ``pending``) and what it became."""

    url: str
    content_type: str
    width: int
    height: int
    size: int
    #: The application screens avatars: this one becomes the user's once WeChat passes it (``review_id``).
    pending: bool = False
    review_id: str = ""


class ContentSubject(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/content-safety/subject`` -> ``ContentSubjectResult``: whose WeChat identity submits content
    in ``client_id``'s mini program (WeChat's content security needs the submitter's openid)."""

    client_id: str
    user_id: str


class ContentSubjectResult(msgspec.Struct, frozen=True, kw_only=True):
    appid: str
    openid: str


class AvatarReviewUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/avatar-reviews/trace`` (the check was submitted: WeChat's ``trace_id``) or ``.../discard``
    (it could not be: the pending avatar is dropped)."""

    review_id: str
    trace_id: str = ""


class WechatPush(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/wechat-push`` -> ``WechatPushAnswer``: a request WeChat's message push made to the gateway's
    ``/api/wechat-push/{appid}``, as it came (``body`` is base64 on the JSON wire)."""

    appid: str
    method: str
    signature: str = ""
    timestamp: str = ""
    nonce: str = ""
    echostr: str = ""
    body: bytes = b""


class WechatPushAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The text the gateway answers WeChat with: ``echostr`` for the URL check, "success" for an event."""

    text: str


class WechatDataRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /internal/wechat-data/decrypt`` -> ``DecryptedData``: a mini program's legacy ``encryptedData`` and
    ``iv``, opened with the session_key of the bearer token's login."""

    credentials: Credentials
    encrypted_data: str
    iv: str


class DecryptedData(msgspec.Struct, frozen=True, kw_only=True):
    """The decrypted JSON object (phone number or userInfo, with its watermark): personal data, never logged."""

    data: dict[str, Any]


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True, tag="audit_event.v1"):
    """One row of ``audit_events``, for ``shared.audit.AuditPublisher`` (``Keys.audit_stream``). Never a secret:
    ``details`` holds names, counts and limits, not tokens, codes or passwords."""

    action: str
    outcome: str = "ok"
    #: Unix time (seconds) of the event; 0: when the user store writes it.
    at: float = 0.0
    #: ``user``, ``client``, ``admin`` or ``system``, and the id it names (a user id, a client_id, ...).
    actor_kind: str = ""
    actor_id: str = ""
    #: A user's uuid, or empty.
    target_user_id: str = ""
    organization: str = ""
    application: str = ""
    client_id: str = ""
    client_ip: str = ""
    request_id: str = ""
    details: dict[str, str | int | float | bool | list[str]] = {}


AuditMessage = AuditEvent
audit_decoder = msgspec.msgpack.Decoder(AuditMessage)
