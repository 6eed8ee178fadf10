"""Client of the user store's internal API, used by the gateway and the auth workers.

Endpoints (all JSON, all behind ``Authorization: Bearer <INTERNAL_TOKEN>``; errors are ``ErrorBody`` with the
status of the matching ``MinidoorError``):

- ``GET  /internal/applications/{client_id}`` -> ``ApplicationInfo`` (401 invalid_client when unknown)
- ``GET  /internal/applications/{client_id}/wechat-miniprogram`` -> ``MiniProgramProvider``
  (401 invalid_client when unknown or without a WeChat mini-program provider)
- ``POST /internal/logins/wechat-miniprogram`` ``WechatLogin`` -> ``LoginResult``
  (400 invalid_grant when sign-up is disabled for a new user, 401 invalid_client for an unknown client)
- ``POST /internal/logins/wechat-phone`` ``PhoneLogin`` -> ``LoginResult`` (400 invalid_grant for a phone number
  without an account where sign-up is off or only pre-provisioned users may sign in, 409 when the WeChat identity
  belongs to another user)
- ``POST /internal/logins/wechat-miniprogram/batch`` ``WechatLogins`` -> ``LoginOutcomes``: each login's result or
  the error it would have answered alone, in order
- ``POST /internal/tokens/introspect`` ``TokenRequest`` -> ``Introspection`` (RFC 7662; 400 invalid_request without
  client credentials, 401 invalid_client when they are wrong)
- ``POST /internal/tokens/revoke`` ``TokenRequest`` -> ``{}`` (RFC 7009; same client errors, plus 400
  unauthorized_client for another application's token)
- ``GET  /internal/keys/jwks`` -> ``JwkSet``; ``GET /internal/openid-configuration`` -> ``OpenIdConfiguration``
- ``POST /internal/tokens/refresh`` ``RefreshRequest`` -> ``TokenResponse`` (400 invalid_grant for a dead, replayed or
  foreign refresh token, 401 invalid_client for a wrong secret)
- ``POST /internal/account/{get-account,userinfo,get-user,get-users}`` ``UserQuery`` -> ``Account``, ``UserInfo``,
  ``CasdoorUser``, ``UserList``; ``POST /internal/account/update-user`` ``UserUpdate`` -> ``UpdateResult``;
  ``POST /internal/account/logout`` ``LogoutRequest`` -> ``LogoutResult``;
  ``POST /internal/account/link-wechat`` ``WechatLink`` -> ``LinkResult`` (from a worker: 409 when another user has
  the identity); ``POST /internal/account/unlink-wechat`` ``UnlinkWechat`` -> ``LinkResult`` (400 for the last way
  to sign in). Each authenticates the ``Credentials`` it
  carries: 401 without or with bad ones, 403 not allowed, 400 bad input, 404 unknown user, 409 a taken name, email
  or phone.
- ``POST /internal/account/delete-account`` ``DeleteAccountRequest`` and ``POST /internal/account/delete-user``
  ``DeleteUserRequest`` -> ``DeletionResult`` (403 for a wrong second proof or a caller that is no admin);
  ``POST /internal/account/export-account`` ``UserQuery`` -> ``AccountExport``.
- ``POST /internal/avatars`` ``AvatarUpload`` -> ``AvatarResult`` (400/413/415 for an upload that is not a clean
  JPEG, PNG or WebP of at most 2 MB); ``GET /internal/avatars/{id}`` -> the image bytes, ``Content-Type``, ``ETag``
  (404 when unknown)
- ``POST /internal/wechat-data/decrypt`` ``WechatDataRequest`` -> ``DecryptedData`` (400 for a stale session_key,
  a stale or malformed payload, 403 for another mini program's watermark)
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from shared.config import Secret
from shared.errors import MinidoorError, Unauthorized, Unavailable, error_from_wire
from shared.guard import valid_client_id
from shared.messages import (
    Account,
    AccountExport,
    ApplicationInfo,
    AvatarResult,
    AvatarReviewUpdate,
    AvatarUpload,
    CasdoorUser,
    ContentSubject,
    ContentSubjectResult,
    DecryptedData,
    DeleteAccountRequest,
    DeleteUserRequest,
    DeletionResult,
    ErrorBody,
    Introspection,
    JwkSet,
    LinkResult,
    LoginOutcomes,
    LoginResult,
    LogoutRequest,
    LogoutResult,
    MiniProgramProvider,
    OpenIdConfiguration,
    PhoneLogin,
    RefreshRequest,
    TokenRequest,
    TokenResponse,
    UnlinkWechat,
    UpdateResult,
    UserInfo,
    UserList,
    UserQuery,
    UserUpdate,
    WechatDataRequest,
    WechatLink,
    WechatLogin,
    WechatLogins,
    WechatPush,
    WechatPushAnswer,
)
from shared.middleware import REQUEST_ID_HEADER

T = TypeVar("T")

_error_decoder = msgspec.json.Decoder(ErrorBody)
_app_decoder = msgspec.json.Decoder(ApplicationInfo)
_provider_decoder = msgspec.json.Decoder(MiniProgramProvider)
_login_decoder = msgspec.json.Decoder(LoginResult)
_outcomes_decoder = msgspec.json.Decoder(LoginOutcomes)
_introspection_decoder = msgspec.json.Decoder(Introspection)
_jwks_decoder = msgspec.json.Decoder(JwkSet)
_discovery_decoder = msgspec.json.Decoder(OpenIdConfiguration)
_any_decoder = msgspec.json.Decoder()
_token_decoder = msgspec.json.Decoder(TokenResponse)
_account_decoder = msgspec.json.Decoder(Account)
_userinfo_decoder = msgspec.json.Decoder(UserInfo)
_user_decoder = msgspec.json.Decoder(CasdoorUser)
_users_decoder = msgspec.json.Decoder(UserList)
_update_decoder = msgspec.json.Decoder(UpdateResult)
_logout_decoder = msgspec.json.Decoder(LogoutResult)
_deletion_decoder = msgspec.json.Decoder(DeletionResult)
_export_decoder = msgspec.json.Decoder(AccountExport)
_avatar_decoder = msgspec.json.Decoder(AvatarResult)
_decrypted_decoder = msgspec.json.Decoder(DecryptedData)
_link_decoder = msgspec.json.Decoder(LinkResult)
_subject_decoder = msgspec.json.Decoder(ContentSubjectResult)
_push_decoder = msgspec.json.Decoder(WechatPushAnswer)
_encoder = msgspec.json.Encoder()

#: The end user's IP as the gateway saw it, for the user store's audit log; sent on the calls that are audited.
CLIENT_IP_HEADER = "X-Client-IP"


class StoredImage(NamedTuple):
    content: bytes
    content_type: str
    etag: str


class UserStoreClient:
    """Thin typed wrapper; the caller owns ``session`` (one per process, closed by the app's lifecycle)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: Secret, timeout: float = 5.0) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def get_application(self, client_id: str, *, request_id: str = "") -> ApplicationInfo:
        path = application_path(client_id)
        return await self._call("GET", path, _app_decoder, request_id=request_id)

    async def get_miniprogram_provider(self, client_id: str, *, request_id: str = "") -> MiniProgramProvider:
        path = application_path(client_id, "wechat-miniprogram")
        return await self._call("GET", path, _provider_decoder, request_id=request_id)

    async def login_wechat(
        self, login: WechatLogin, *, request_id: str = "", timeout: float | None = None, client_ip: str = ""
    ) -> LoginResult:
        return await self._call(
            "POST",
            "/internal/logins/wechat-miniprogram",
            _login_decoder,
            body=login,
            request_id=request_id,
            timeout=timeout,
            client_ip=client_ip,
        )

    async def login_phone(
        self, login: PhoneLogin, *, request_id: str = "", timeout: float | None = None, client_ip: str = ""
    ) -> LoginResult:
        return await self._call(
            "POST",
            "/internal/logins/wechat-phone",
            _login_decoder,
            body=login,
            request_id=request_id,
            timeout=timeout,
            client_ip=client_ip,
        )

    async def login_wechat_batch(self, batch: WechatLogins, *, timeout: float | None = None) -> LoginOutcomes:
        path = "/internal/logins/wechat-miniprogram/batch"
        return await self._call("POST", path, _outcomes_decoder, body=batch, timeout=timeout)

    async def introspect(self, request: TokenRequest, *, request_id: str = "") -> Introspection:
        path = "/internal/tokens/introspect"
        return await self._call("POST", path, _introspection_decoder, body=request, request_id=request_id)

    async def revoke(self, request: TokenRequest, *, request_id: str = "", client_ip: str = "") -> None:
        path = "/internal/tokens/revoke"
        await self._call("POST", path, _any_decoder, body=request, request_id=request_id, client_ip=client_ip)

    async def ready(self, timeout: float) -> str | None:
        """None while the user store's ``/readyz`` answers 200 within ``timeout``, else why not (no personal data)."""
        try:
            async with self._session.get(self._base + "/readyz", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                if resp.status == 200:
                    return None
                return f"the user store is not ready (HTTP {resp.status})"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"the user store did not answer ({type(exc).__name__})"

    async def get_jwks(self, *, request_id: str = "") -> JwkSet:
        return await self._call("GET", "/internal/keys/jwks", _jwks_decoder, request_id=request_id)

    async def get_openid_configuration(self, *, request_id: str = "") -> OpenIdConfiguration:
        path = "/internal/openid-configuration"
        return await self._call("GET", path, _discovery_decoder, request_id=request_id)

    async def refresh(self, request: RefreshRequest, *, request_id: str = "", client_ip: str = "") -> TokenResponse:
        path = "/internal/tokens/refresh"
        return await self._call("POST", path, _token_decoder, body=request, request_id=request_id, client_ip=client_ip)

    async def get_account(self, query: UserQuery, *, request_id: str = "") -> Account:
        path = "/internal/account/get-account"
        return await self._call("POST", path, _account_decoder, body=query, request_id=request_id)

    async def userinfo(self, query: UserQuery, *, request_id: str = "") -> UserInfo:
        path = "/internal/account/userinfo"
        return await self._call("POST", path, _userinfo_decoder, body=query, request_id=request_id)

    async def get_user(self, query: UserQuery, *, request_id: str = "") -> CasdoorUser:
        path = "/internal/account/get-user"
        return await self._call("POST", path, _user_decoder, body=query, request_id=request_id)

    async def get_users(self, query: UserQuery, *, request_id: str = "") -> UserList:
        path = "/internal/account/get-users"
        return await self._call("POST", path, _users_decoder, body=query, request_id=request_id)

    async def update_user(self, update: UserUpdate, *, request_id: str = "", client_ip: str = "") -> UpdateResult:
        path = "/internal/account/update-user"
        return await self._call("POST", path, _update_decoder, body=update, request_id=request_id, client_ip=client_ip)

    async def logout(self, request: LogoutRequest, *, request_id: str = "", client_ip: str = "") -> LogoutResult:
        path = "/internal/account/logout"
        return await self._call("POST", path, _logout_decoder, body=request, request_id=request_id, client_ip=client_ip)

    async def delete_account(
        self, request: DeleteAccountRequest, *, request_id: str = "", client_ip: str = ""
    ) -> DeletionResult:
        path = "/internal/account/delete-account"
        return await self._call(
            "POST", path, _deletion_decoder, body=request, request_id=request_id, client_ip=client_ip
        )

    async def delete_user(
        self, request: DeleteUserRequest, *, request_id: str = "", client_ip: str = ""
    ) -> DeletionResult:
        path = "/internal/account/delete-user"
        return await self._call(
            "POST", path, _deletion_decoder, body=request, request_id=request_id, client_ip=client_ip
        )

    async def export_account(self, query: UserQuery, *, request_id: str = "", client_ip: str = "") -> AccountExport:
        path = "/internal/account/export-account"
        return await self._call("POST", path, _export_decoder, body=query, request_id=request_id, client_ip=client_ip)

    async def upload_avatar(self, upload: AvatarUpload, *, request_id: str = "", client_ip: str = "") -> AvatarResult:
        # Re-encoding up to 2 MB of image in the store takes longer than a JSON call.
        path = "/internal/avatars"
        return await self._call(
            "POST", path, _avatar_decoder, body=upload, request_id=request_id, client_ip=client_ip, timeout=30.0
        )

    async def get_avatar(self, avatar_id: str, *, request_id: str = "") -> StoredImage | None:
        """The stored avatar, or None when there is none by that id."""
        headers = dict(self._headers)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        url = f"{self._base}/internal/avatars/{quote(avatar_id, safe='')}"
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout) as resp:
                raw = await resp.read()
                if resp.status == 200:
                    return StoredImage(raw, resp.headers.get("Content-Type", ""), resp.headers.get("ETag", ""))
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable("the user store did not answer ({kind})", kind=type(exc).__name__, retry_after=1) from exc
        if status == 404:
            return None
        raise Unavailable("the user store answered HTTP {http_status}", http_status=status, retry_after=1)

    async def decrypt_wechat_data(
        self, request: WechatDataRequest, *, request_id: str = "", client_ip: str = ""
    ) -> DecryptedData:
        path = "/internal/wechat-data/decrypt"
        return await self._call(
            "POST", path, _decrypted_decoder, body=request, request_id=request_id, client_ip=client_ip
        )

    async def link_wechat(self, link: WechatLink, *, request_id: str = "", client_ip: str = "") -> LinkResult:
        path = "/internal/account/link-wechat"
        return await self._call("POST", path, _link_decoder, body=link, request_id=request_id, client_ip=client_ip)

    async def unlink_wechat(self, req: UnlinkWechat, *, request_id: str = "", client_ip: str = "") -> LinkResult:
        path = "/internal/account/unlink-wechat"
        return await self._call("POST", path, _link_decoder, body=req, request_id=request_id, client_ip=client_ip)

    async def content_subject(self, req: ContentSubject, *, request_id: str = "") -> ContentSubjectResult:
        path = "/internal/content-safety/subject"
        return await self._call("POST", path, _subject_decoder, body=req, request_id=request_id)

    async def record_avatar_trace(self, req: AvatarReviewUpdate, *, request_id: str = "") -> None:
        await self._call("POST", "/internal/avatar-reviews/trace", _any_decoder, body=req, request_id=request_id)

    async def discard_avatar_review(self, req: AvatarReviewUpdate, *, request_id: str = "") -> None:
        await self._call("POST", "/internal/avatar-reviews/discard", _any_decoder, body=req, request_id=request_id)

    async def wechat_push(self, push: WechatPush, *, request_id: str = "", client_ip: str = "") -> WechatPushAnswer:
        return await self._call(
            "POST", "/internal/wechat-push", _push_decoder, body=push, request_id=request_id, client_ip=client_ip
        )

    async def _call(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[T],
        *,
        body: Any = None,
        request_id: str = "",
        timeout: float | None = None,
        client_ip: str = "",
    ) -> T:
        headers = dict(self._headers)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        if client_ip:
            headers[CLIENT_IP_HEADER] = client_ip
        data = None
        if body is not None:
            data = _encoder.encode(body)
            headers["Content-Type"] = "application/json"
        client_timeout = self._timeout if timeout is None else aiohttp.ClientTimeout(total=max(timeout, 0.001))
        try:
            async with self._session.request(
                method, self._base + path, data=data, headers=headers, timeout=client_timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable("the user store did not answer ({kind})", kind=type(exc).__name__, retry_after=1) from exc
        if status == 200:
            return decoder.decode(raw)
        try:
            err = _error_decoder.decode(raw)
        except msgspec.DecodeError:
            raise Unavailable("the user store answered HTTP {http_status}", http_status=status, retry_after=1) from None
        exc2: MinidoorError = error_from_wire(
            status,
            err.error,
            err.error_description,
            int(retry_after) if retry_after and retry_after.isdigit() else None,
            message=err.message,
            params=err.params,
        )
        raise exc2


def application_path(client_id: str, *rest: str) -> str:
    """``/internal/applications/{client_id}[/rest...]``; ``Unauthorized`` for an id that cannot be one. quote()
    leaves "." alone, and the client normalizes "." and ".." segments away, so such an id would name another path
    (a 404, then a 503): the gateway refuses them already, this keeps every caller safe."""
    if not valid_client_id(client_id):
        raise Unauthorized("client_id is invalid")
    return "/".join(("/internal/applications", quote(client_id, safe=""), *rest))
