"""Exactly-once code exchange, the worker's side: the steps a job takes through its code's exchange record. The
record's fields, the claim's decisions and the delivery protocol are in ``shared/redis_scripts.py``, with the
scripts each method below runs.

Crash windows, for a worker that dies (SIGKILL) while owning a job; the job is then claimed by another worker
under the same job id, so it finds itself the owner:

1. before the claim: nothing was recorded; the retry starts afresh.
2. after the claim, before ``calling``: the code was never sent; the retry presents it. A claim made to present
   the code sets ``calling`` itself, so this window is left only when the breaker was open at the claim.
3. after ``calling``, before ``session``: WeChat may have used the code and its answer is lost. The code is never
   presented twice: the job is answered 503 "call wx.login() again", final. This window is one WeChat round trip.
4. after ``session``, before ``reply``: the retry reuses the session, WeChat is not called again; the user store's
   upsert is idempotent (the user exists once; at most one unused token row more).
5. after ``reply``, before delivery: the retry sends the stored answer. Writing the final answer, the reply, XACK
   and XDEL are one script (``FINISH_AND_REPLY``), so a job whose answer is stored is also acknowledged; a stored
   answer meets a pending job only when that job is another one with the same code (a double tap).

Failures that leave the code usable are not final: a WeChat failure that did not use the code (busy, down, rate
limit, breaker open) deletes the record; a user store that stays unavailable after the exchange releases only the
ownership and keeps the session, so a retry with the same code reuses it within the record's TTL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared import redis_scripts
from shared.messages import STREAM_FIELD, Reply, WechatSession, encoder, reply_decoder, session_decoder
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys
from shared.redis_scripts import RECORD_TTL_MS
from shared.streamseal import StreamSeal, open_session, seal_session

#: The gateway's reply stream keeps its last replies; their TTL only clears the stream of a gateway that died (it
#: deletes what it reads).
REPLY_STREAM_MAX_LEN = 10_000
REPLY_STREAM_TTL_MS = 10 * 60 * 1000


class State(enum.Enum):
    OWNER = "owner"
    ANSWER = "answer"
    WAIT = "wait"
    REPLAYED = "replayed"


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    state: State
    #: OWNER: the stored session, if an earlier attempt got one.
    session: WechatSession | None = None
    #: OWNER: an earlier attempt presented the code and its answer was lost.
    interrupted: bool = False
    #: OWNER: the claim set ``calling`` (it was asked to): the job presents the code next.
    calling: bool = False
    #: ANSWER: the final reply, as its first job got it.
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class JobEntry:
    """Where a job's reply goes, and the job stream entry its acknowledgement removes."""

    reply_to: str
    job_stream: str
    group: str
    entry_id: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    """What ``finish_and_reply`` did: replied with the answer, or left the reply to the caller."""

    replied: bool
    #: Not replied: the answer that stands instead of it, or None when the code was replayed meanwhile.
    standing: Reply | None = None


class ExchangeRecords:
    """The record's scripts (``shared/redis_scripts.py``) on one Redis client; every call takes the record's key.
    Each script call joins those other jobs make at the same time (``shared/redis_batch.py``)."""

    def __init__(
        self, redis: aioredis.Redis, seal: StreamSeal | None = None, *, batcher: RedisBatcher | None = None
    ) -> None:
        #: Seals the stored session (its session_key); answers are sealed by the job handler before they get here.
        self._seal = seal
        batcher = batcher or RedisBatcher(redis)
        self._claim = batcher.script(redis_scripts.CLAIM)
        self._owner_set = batcher.script(redis_scripts.OWNER_SET)
        self._finish = batcher.script(redis_scripts.FINISH)
        self._finish_and_reply = batcher.script(redis_scripts.FINISH_AND_REPLY)
        self._release = batcher.script(redis_scripts.RELEASE)
        self._store_session = batcher.script(redis_scripts.STORE_SESSION)
        self._reply = batcher.script(redis_scripts.REPLY)

    async def claim(
        self, key: str, *, job_id: str, stream_id: str, now: float, deadline: float, call: bool = False
    ) -> Claim:
        """Decide what the job does with its code (see ``shared/redis_scripts.py``); with ``call``, an owner that
        will present the code is marked ``calling`` in the same step."""
        raw = await self._claim(
            keys=(key, RedisKeys.delivered_answer(key)),
            args=(job_id, stream_id, repr(now), repr(deadline), RECORD_TTL_MS, 1 if call else 0),
        )
        state = State(raw[0].decode())
        if state is State.ANSWER:
            return Claim(state=state, reply=reply_decoder.decode(raw[1]))
        if state is State.OWNER:
            session = open_session(self._seal, session_decoder.decode(raw[1])) if raw[1] else None
            return Claim(state=state, session=session, interrupted=bool(raw[2]), calling=raw[3] == 1)
        return Claim(state=state)

    async def mark_calling(self, key: str, job_id: str) -> bool:
        """Record that the code is about to be presented; False if the job no longer owns the record."""
        return bool(await self._owner_set(keys=(key,), args=(job_id, "calling", "1")))

    async def store_session(self, key: str, session: WechatSession) -> None:
        await self._store_session(keys=(key,), args=(encoder.encode(seal_session(self._seal, session)),))

    async def finish(self, key: str, reply: Reply) -> Reply | None:
        """Store ``reply`` as the final answer unless one exists; return the one that stands (``reply`` itself when
        the record has expired), or None when the code's answer was delivered and is no longer kept: a replay."""
        raw = await self._finish(keys=(key, RedisKeys.delivered_answer(key)), args=(encoder.encode(reply),))
        match raw[0]:
            case b"answer":
                stored: Reply = reply_decoder.decode(raw[1])
                return stored
            case b"replayed":
                return None
        return reply

    async def finish_and_reply(self, key: str, reply: Reply, entry: JobEntry) -> Finished:
        """``finish``, and when ``reply`` is the answer that stands (or the record has expired), reply with it and
        acknowledge the job, all in one step."""
        raw = await self._finish_and_reply(
            keys=(key, RedisKeys.delivered_answer(key), entry.reply_to, entry.job_stream),
            args=(
                encoder.encode(reply),
                STREAM_FIELD,
                REPLY_STREAM_MAX_LEN,
                REPLY_STREAM_TTL_MS,
                entry.group,
                entry.entry_id,
            ),
        )
        match raw[0]:
            case b"replied":
                return Finished(replied=True)
            case b"answer":
                return Finished(replied=False, standing=reply_decoder.decode(raw[1]))
        return Finished(replied=False)

    async def release(self, key: str, job_id: str) -> None:
        """Give the code back: the next job with it starts over (reusing the session, if there is one)."""
        await self._release(keys=(key,), args=(job_id,))

    async def reply(self, reply: Reply, entry: JobEntry) -> None:
        """Write ``reply`` for the gateway and acknowledge the job, atomically."""
        await self._reply(
            keys=(entry.reply_to, entry.job_stream),
            args=(
                STREAM_FIELD,
                encoder.encode(reply),
                REPLY_STREAM_MAX_LEN,
                REPLY_STREAM_TTL_MS,
                entry.group,
                entry.entry_id,
            ),
        )
