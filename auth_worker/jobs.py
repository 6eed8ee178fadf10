"""One code-exchange job: application → WeChat → user store → a reply for the waiting gateway."""

from __future__ import annotations

import asyncio
import time

from auth_worker.wechat import WechatClient
from shared.errors import MinidoorError, Unavailable
from shared.messages import (
    CodeExchangeJob,
    LoginFailed,
    LoginResult,
    LoginSucceeded,
    MiniProgramProvider,
    Reply,
    WechatLogin,
)
from shared.user_store_client import UserStoreClient

# Time kept back from WeChat's share of a job's deadline for the user store's part of the work.
_USER_STORE_RESERVE = 1.0
_PROVIDER_TTL = 30.0


class JobHandler:
    def __init__(self, user_store: UserStoreClient, wechat: WechatClient) -> None:
        self._user_store = user_store
        self._wechat = wechat
        self._providers: dict[str, tuple[float, MiniProgramProvider]] = {}

    async def handle(self, job: CodeExchangeJob) -> Reply:
        """Never raises for a failed login: every outcome is a reply the client can act on."""
        try:
            provider = await self._provider(job)
            remaining = job.deadline - time.time()
            session = await self._wechat.jscode2session(
                provider.appid,
                provider.secret,
                job.code,
                deadline=job.deadline - min(_USER_STORE_RESERVE, remaining / 4),
            )
            login = WechatLogin(
                client_id=job.client_id,
                appid=provider.appid,
                openid=session.openid,
                unionid=session.unionid,
                session_key=session.session_key,
                username=job.username,
                avatar=job.avatar,
            )
            result = await self._login(login, job)
        except MinidoorError as exc:
            return LoginFailed(
                job_id=job.job_id,
                status=exc.status,
                error=exc.error,
                error_description=exc.description,
                retry_after=exc.retry_after,
            )
        return LoginSucceeded(job_id=job.job_id, token=result.token)

    async def _provider(self, job: CodeExchangeJob) -> MiniProgramProvider:
        now = time.monotonic()
        hit = self._providers.get(job.client_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        provider = await self._user_store.get_miniprogram_provider(job.client_id, request_id=job.request_id)
        if len(self._providers) > 10_000:
            self._providers.clear()
        self._providers[job.client_id] = (now + _PROVIDER_TTL, provider)
        return provider

    async def _login(self, login: WechatLogin, job: CodeExchangeJob) -> LoginResult:
        """The upsert is idempotent, so an unreachable user store is retried while the deadline allows."""
        backoff = 0.1
        while True:
            remaining = job.deadline - time.time()
            try:
                return await self._user_store.login_wechat(login, request_id=job.request_id, timeout=remaining)
            except Unavailable:
                if job.deadline - time.time() < backoff + 0.1:
                    raise
            await asyncio.sleep(backoff)
            backoff *= 2
