"""One login job, the worker's side: application → exchange record → WeChat → user store → an answer for the gateway.

Every path goes through the code's exchange record (``exchange.py``), so a code is presented to WeChat at most
once however many jobs carry it (double taps, retries after a crash, replays).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import redis.asyncio as aioredis

from auth_worker.content_safety import ContentChecks
from auth_worker.exchange import Claim, ExchangeRecords, JobEntry, State
from auth_worker.phone import PhoneClient
from auth_worker.user_store_logins import UserStoreLogins
from auth_worker.wechat import CodeUnspent, WechatClient
from shared.errors import InvalidGrant, MinidoorError, Unavailable
from shared.messages import (
    CodeExchangeJob,
    ContentCheckJob,
    Job,
    LinkWechatJob,
    LoginFailed,
    LoginResult,
    LoginSucceeded,
    MiniProgramProvider,
    PhoneLogin,
    PhoneLoginJob,
    Reply,
    WechatLink,
    WechatLinked,
    WechatLogin,
    WechatSession,
)
from shared.ratelimit import Limit, Origin, RateLimiter
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys
from shared.streamseal import StreamSeal, seal_reply
from shared.user_store_client import UserStoreClient

T = TypeVar("T")
J = TypeVar("J", CodeExchangeJob, PhoneLoginJob, LinkWechatJob)

# Time kept back from WeChat's share of a job's deadline for the user store's part of the work.
_USER_STORE_RESERVE = 1.0
# Time kept back from the whole job for writing the answer.
_DELIVERY_RESERVE = 0.1
_PROVIDER_TTL = 30.0
REPLAYED = "the code was already used (40163: code been used); call wx.login() again"
PHONE_INTERRUPTED = "the sign-in was interrupted after WeChat may have used the phone code; tap the button again"
LOGIN_CODE_TAKEN = "login_code was already used; call wx.login() again"
LOGIN_CODE_SPENT = "the code was used by a phone sign-in; call wx.login() again"


def phone_code_key(code: str) -> str:
    """What a phone code is recorded under (``RedisKeys.code_exchange``): never the same record as a login code."""
    return "phone\x00" + code


INTERRUPTED = "the login was interrupted after WeChat may have used the code; call wx.login() again"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the worker writes back: ``reply`` None means the job ran out of time and is dropped unanswered."""

    reply: Reply | None
    #: How the code was settled (a label of ``minidoor_worker_code_exchanges``).
    path: str
    #: The exchange record when ``reply`` is the code's final answer (the gateway marks it delivered).
    record: str = ""
    #: ``reply`` is new and final: it is stored as the code's answer in the step that replies with it.
    final: bool = False


class JobHandler:
    def __init__(
        self,
        redis: aioredis.Redis,
        redis_keys: RedisKeys,
        user_store: UserStoreClient,
        wechat: WechatClient,
        seal: StreamSeal | None = None,
        *,
        limiter: RateLimiter | None = None,
        per_wechat_user: Limit | None = None,
        batcher: RedisBatcher | None = None,
        phone: PhoneClient | None = None,
        content: ContentChecks | None = None,
    ) -> None:
        self._phone = phone
        self._content = content
        self.records = ExchangeRecords(redis, seal, batcher=batcher)
        self._seal = seal
        self._limiter = limiter
        self._per_wechat_user = per_wechat_user
        self._redis_keys = redis_keys
        self._user_store = user_store
        self._logins = UserStoreLogins(user_store)
        self._wechat = wechat
        self._providers: dict[str, tuple[float, MiniProgramProvider]] = {}

    async def handle(self, job: Job, stream_id: str) -> Answer:
        """Never raises for a failed login: every outcome is an answer the client can act on."""
        try:
            provider = await _retry_unavailable(job, lambda: self._provider(job))
            if isinstance(job, PhoneLoginJob):
                key = self._redis_keys.code_exchange(provider.appid, job.client_id, phone_code_key(job.code))
                answer = await self._settle(job, stream_id, provider, key, self._own_phone)
            elif isinstance(job, LinkWechatJob):
                key = self._redis_keys.code_exchange(provider.appid, job.client_id, job.code)
                answer = await self._settle(job, stream_id, provider, key, self._own_link)
            elif isinstance(job, ContentCheckJob):
                if self._content is None:
                    raise Unavailable("content safety is not set up on this worker", retry_after=1)
                answer = Answer(await self._content.handle(job, provider), "content_check")
            else:
                key = self._redis_keys.code_exchange(provider.appid, job.client_id, job.code)
                answer = await self._settle(job, stream_id, provider, key, self._own)
        except MinidoorError as exc:
            answer = Answer(_failed(job, exc), "none")
        return answer

    async def reply(self, job: Job, entry: JobEntry, answer: Answer) -> Answer:
        """Write ``answer`` on the job's reply stream and acknowledge the job, in one step; a final answer is stored
        as its code's in that same step, unless another stands (then that one, under this job's id, is the reply) or
        the code was replayed meanwhile. Returns the answer as replied; a Redis error is the caller's to retry."""
        assert answer.reply is not None
        if answer.final:
            finished = await self.records.finish_and_reply(answer.record, _naming(answer), entry)
            if finished.replied:
                return answer
            if finished.standing is None:
                answer = Answer(_failed(job, InvalidGrant(REPLAYED)), "replayed")
            else:  # a stale owner finishing late: the first answer stands
                answer = Answer(_retag(finished.standing, job), answer.path, answer.record)
        await self.records.reply(_naming(answer), entry)
        return answer

    async def _settle(
        self,
        job: J,
        stream_id: str,
        provider: MiniProgramProvider,
        key: str,
        own: Callable[[J, MiniProgramProvider, str, Claim], Awaitable[Answer]],
    ) -> Answer:
        pause = 0.02
        while True:
            claim = await _redis(
                job,
                lambda: self.records.claim(
                    key,
                    job_id=job.job_id,
                    stream_id=stream_id,
                    now=time.time(),
                    deadline=job.deadline,
                    # A phone job marks its code just before presenting it (it may first claim its login code).
                    call=not isinstance(job, PhoneLoginJob) and not self._wechat.breaker.is_open,
                ),
            )
            match claim.state:
                case State.REPLAYED:
                    return Answer(_failed(job, InvalidGrant(REPLAYED)), "replayed")
                case State.ANSWER:
                    assert claim.reply is not None
                    path = "redelivered" if claim.reply.job_id == job.job_id else "shared"
                    return Answer(_retag(claim.reply, job), path, key)
                case State.OWNER:
                    return await own(job, provider, key, claim)
            # Another job owns the code (a double tap): wait for its answer, or for it to give the code back.
            if time.time() + pause > job.deadline - _DELIVERY_RESERVE:
                return Answer(None, "waited")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _own(self, job: CodeExchangeJob, provider: MiniProgramProvider, key: str, claim: Claim) -> Answer:
        session = claim.session
        path = "session_reused"
        storing: asyncio.Future[None] | None = None
        if session is None:
            path = "exchanged"
            exchanged = await self._exchange(job, provider, key, claim)
            if isinstance(exchanged, Answer):
                return exchanged
            session = exchanged
            # Kept while the user's budget is checked: both go to Redis in one round trip.
            storing = asyncio.ensure_future(self._store_session(job, key, session))
        refusal = await self._check_user(job, provider, session)
        if storing is not None:
            await storing
        if refusal is not None:
            return self._final_error(job, key, refusal, path)
        username, avatar = job.username, job.avatar
        if provider.content_safety:
            # A nickname becomes the display name only once WeChat passes it; an avatar URL is never taken on trust
            # (uploaded avatars are screened by upload-avatar).
            avatar = ""
            if self._content is None or not await self._content.check_name(provider, session.openid, username):
                username = ""
        login = WechatLogin(
            client_id=job.client_id,
            appid=provider.appid,
            openid=session.openid,
            unionid=session.unionid,
            session_key=session.session_key,
            username=username,
            avatar=avatar,
        )
        try:
            login_result = await self._login(login, job)
        except Unavailable as exc:
            await self._release(key, job)  # keeps the session: a retry with this code needs no WeChat call
            return Answer(_failed(job, exc), "released")
        except MinidoorError as exc:
            return self._final_error(job, key, exc, path)
        # Sealed from here on: the answer is kept in the exchange record and the reply stream, both in Redis.
        succeeded = seal_reply(self._seal, LoginSucceeded(job_id=job.job_id, token=login_result.token))
        return self._final(key, succeeded, path)

    async def _exchange(
        self, job: CodeExchangeJob | LinkWechatJob, provider: MiniProgramProvider, key: str, claim: Claim
    ) -> WechatSession | Answer:
        """The code's jscode2session result, for a record that has none yet (the caller stores it); or the answer
        that ends the job: the code given back when WeChat surely did not use it, else its final error."""
        if claim.interrupted:
            return self._final_error(job, key, Unavailable(INTERRUPTED, retry_after=1), "interrupted")
        try:
            if not claim.calling:  # the breaker was open at the claim: it decides now
                self._wechat.check_breaker()
                if not await _redis(job, lambda: self.records.mark_calling(key, job.job_id)):
                    return Answer(None, "lost")  # our client gave up and another job took the code over
            remaining = job.deadline - time.time()
            result = await self._wechat.jscode2session(
                provider.appid,
                provider.secret,
                job.code,
                deadline=job.deadline - min(_USER_STORE_RESERVE, remaining / 4),
            )
        except MinidoorError as exc:
            if isinstance(exc, CodeUnspent):
                await self._release(key, job)
                return Answer(_failed(job, exc), "released")
            return self._final_error(job, key, exc, "exchanged")
        return WechatSession(openid=result.openid, session_key=result.session_key, unionid=result.unionid)

    async def _own_link(self, job: LinkWechatJob, provider: MiniProgramProvider, key: str, claim: Claim) -> Answer:
        """The login code's record is this job's: exchange the code (or reuse the session an earlier attempt stored)
        and link the identity to the bearer's user; the answer is the code's final one, as a login's is."""
        session = claim.session
        path = "session_reused"
        if session is None:
            path = "exchanged"
            exchanged = await self._exchange(job, provider, key, claim)
            if isinstance(exchanged, Answer):
                return exchanged
            session = exchanged
            await self._store_session(job, key, session)
        link = WechatLink(
            client_id=job.client_id,
            user_id=job.user_id,
            appid=provider.appid,
            openid=session.openid,
            unionid=session.unionid,
            session_key=session.session_key,
        )
        try:
            linked = await _retry_unavailable(
                job,
                lambda: self._user_store.link_wechat(link, request_id=job.request_id, client_ip=job.client_ip),
            )
        except Unavailable as exc:
            await self._release(key, job)  # keeps the session: a retry with this code needs no WeChat call
            return Answer(_failed(job, exc), "released")
        except MinidoorError as exc:
            return self._final_error(job, key, exc, path)
        return self._final(key, WechatLinked(job_id=job.job_id, appid=linked.appid, linked=linked.linked), path)

    async def _own_phone(self, job: PhoneLoginJob, provider: MiniProgramProvider, key: str, claim: Claim) -> Answer:
        """The phone code's record is this job's: claim the login code's too (if any), exchange the login code, then
        the phone code, and sign in. The phone code is marked ``calling`` just before WeChat sees it; until then a
        failure gives it back."""
        if claim.interrupted:
            return self._final_error(job, key, Unavailable(PHONE_INTERRUPTED, retry_after=1), "interrupted")
        if self._phone is None:
            await self._release(key, job)
            return Answer(
                _failed(job, Unavailable("phone sign-in is not set up on this worker", retry_after=1)), "none"
            )
        session: WechatSession | None = None
        login_key = ""
        if job.login_code:
            login_key = self._redis_keys.code_exchange(provider.appid, job.client_id, job.login_code)
            got = await self._login_session(job, provider, login_key)
            if isinstance(got, MinidoorError):
                await self._release(key, job)
                return Answer(_failed(job, got), "released")
            session = got
        try:
            if not await _redis(job, lambda: self.records.mark_calling(key, job.job_id)):
                if login_key:
                    await self._release(login_key, job)
                return Answer(None, "lost")
            phone = await self._phone.phone_number(provider.appid, provider.secret, job.code)
        except MinidoorError as exc:
            if login_key:
                await self._release(login_key, job)  # keeps its session for a later login with that code
            if isinstance(exc, CodeUnspent):
                await self._release(key, job)
                return Answer(_failed(job, exc), "released")
            return self._final_error(job, key, exc, "exchanged")
        login = PhoneLogin(
            client_id=job.client_id,
            appid=provider.appid,
            phone=phone.number,
            country_code=phone.country_code,
            openid=session.openid if session else "",
            unionid=session.unionid if session else "",
            session_key=session.session_key if session else "",
        )
        try:
            result = await _retry_unavailable(
                job,
                lambda: self._user_store.login_phone(
                    login,
                    request_id=job.request_id,
                    client_ip=job.client_ip,
                    timeout=max(0.001, job.deadline - _DELIVERY_RESERVE - time.time()),
                ),
            )
        except MinidoorError as exc:
            if login_key:
                await self._release(login_key, job)
            return self._final_error(job, key, exc, "exchanged")
        if login_key:
            await self._spend_login_code(job, login_key)
        succeeded = seal_reply(self._seal, LoginSucceeded(job_id=job.job_id, token=result.token))
        return self._final(key, succeeded, "exchanged")

    async def _login_session(
        self, job: PhoneLoginJob, provider: MiniProgramProvider, login_key: str
    ) -> WechatSession | MinidoorError:
        """The jscode2session result of the job's login code, exchanged at most once through its own record; or
        why not (the code was used or is being used by another job, WeChat refused it)."""
        claim = await _redis(
            job,
            lambda: self.records.claim(
                login_key, job_id=job.job_id, stream_id="0-0", now=time.time(), deadline=job.deadline, call=False
            ),
        )
        if claim.state is not State.OWNER or claim.interrupted:
            return InvalidGrant(LOGIN_CODE_TAKEN)  # an interrupted record is left as it is: the code may be spent
        if claim.session is not None:
            return claim.session
        try:
            self._wechat.check_breaker()
            if not await _redis(job, lambda: self.records.mark_calling(login_key, job.job_id)):
                return InvalidGrant(LOGIN_CODE_TAKEN)
            remaining = job.deadline - time.time()
            result = await self._wechat.jscode2session(
                provider.appid, provider.secret, job.login_code, deadline=job.deadline - min(2.0, remaining / 2)
            )
        except MinidoorError as exc:
            if isinstance(exc, CodeUnspent):
                await self._release(login_key, job)
            else:
                await self._spend_login_code(job, login_key, exc)
            return exc
        session = WechatSession(openid=result.openid, session_key=result.session_key, unionid=result.unionid)
        await self._store_session(job, login_key, session)
        return session

    async def _spend_login_code(self, job: PhoneLoginJob, login_key: str, exc: MinidoorError | None = None) -> None:
        """The login code's final answer: any later job with it (a replay) is refused."""
        reply = _failed(job, exc if exc is not None else InvalidGrant(LOGIN_CODE_SPENT))
        try:
            await _redis(job, lambda: self.records.finish(login_key, reply))
        except Unavailable:
            pass  # the record expires with its owner's deadline; its session is then reused, never a second call

    def _final_error(self, job: Job, key: str, exc: MinidoorError, path: str) -> Answer:
        return self._final(key, _failed(job, exc), path)

    def _final(self, key: str, reply: Reply, path: str) -> Answer:
        """The code's final answer, stored as ``reply`` is sent (``reply()``)."""
        return Answer(reply, path, key, final=True)

    async def _store_session(self, job: Job, key: str, session: WechatSession) -> None:
        try:
            await _redis(job, lambda: self.records.store_session(key, session))
        except Unavailable:
            pass  # the login goes on; only a crash from here on would lose the session

    async def _check_user(
        self, job: CodeExchangeJob, provider: MiniProgramProvider, session: WechatSession
    ) -> MinidoorError | None:
        """The refusal of this WeChat user's login budget, which only jscode2session reveals; fails open (a login
        needs no limiter)."""
        if self._limiter is None or self._per_wechat_user is None:
            return None
        # The gateway looked the client up before publishing the job: its client_id names an application.
        origin = Origin(client_ip=job.client_ip, request_id=job.request_id, client_id=job.client_id)
        try:
            await self._limiter.check(self._per_wechat_user, f"{provider.appid}:{session.openid}", origin)
        except MinidoorError as exc:
            return exc
        return None

    async def _release(self, key: str, job: Job) -> None:
        try:
            await _redis(job, lambda: self.records.release(key, job.job_id))
        except Unavailable:
            pass  # the record frees itself once this job's deadline has passed

    async def _provider(self, job: Job) -> MiniProgramProvider:
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
        """The upsert is idempotent (one transaction), so an unavailable user store is retried within the deadline."""
        return await _retry_unavailable(
            job,
            lambda: self._logins.login(
                login,
                request_id=job.request_id,
                client_ip=job.client_ip,
                answer_by=job.deadline - _DELIVERY_RESERVE,
            ),
        )


async def _retry_unavailable(job: Job, call: Callable[[], Awaitable[T]]) -> T:
    backoff = 0.1
    while True:
        try:
            return await call()
        except Unavailable:
            if job.deadline - _DELIVERY_RESERVE - time.time() < backoff + 0.1:
                raise
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 1.0)


async def _redis(job: Job, call: Callable[[], Awaitable[T]]) -> T:
    """Redis calls of the exchange protocol, retried while the job has time (a Redis restart takes a moment)."""
    backoff = 0.05
    while True:
        try:
            return await call()
        except (aioredis.RedisError, OSError) as exc:
            if job.deadline - time.time() < backoff + 0.05:
                raise Unavailable(
                    "the login queue is unreachable ({kind})", kind=type(exc).__name__, retry_after=1
                ) from exc
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 0.5)


def _failed(job: Job, exc: MinidoorError) -> LoginFailed:
    return LoginFailed.of(job.job_id, exc)


def _naming(answer: Answer) -> Reply:
    """The reply as sent: a final answer names its record, for the gateway to mark it delivered."""
    assert answer.reply is not None
    if answer.record and answer.reply.record != answer.record:
        return msgspec.structs.replace(answer.reply, record=answer.record)
    return answer.reply


def _retag(reply: Reply, job: Job) -> Reply:
    return reply if reply.job_id == job.job_id else msgspec.structs.replace(reply, job_id=job.job_id)
