"""Exactly-once code exchange: a Redis hash per (appid, sha256(code)) that every job for that code goes through.

A wx.login() code works once and lives 5 minutes, so the one jscode2session answer is precious. The record
(``RedisKeys.code_exchange``, TTL 10 minutes: longer than a code lives, short because it holds a ``session_key``) has:

    owner, owner_deadline   the job working on the exchange, and when its client stops waiting
    calling                 set just before the code is presented to WeChat
    session                 the jscode2session result (``WechatSession``), stored before anything else can fail
    reply                   the final answer (a token or a final error), written once; the session goes then
    delivered               the job stream's last id when a gateway first handed the final answer to its client

Once delivered, the answer moves out of the record to ``RedisKeys.delivered_answer(record)``, which expires when no job
published before the delivery can still be waiting (``MAX_LOGIN_TIMEOUT``, the longest any gateway may wait, plus a
margin): the record keeps refusing replays for its whole TTL without holding a live token that long. Workers that
know this move must be deployed before gateways that make it.

What a job finds when it claims the record (one Lua script, so every decision is atomic):

- nothing, or a released record, or an owner whose client gave up: it becomes the owner.
- the final answer: it answers the same (a double tap gets the token the first tap got), unless the job was
  published after the delivery (its stream id is above ``delivered``): a replay, answered 400 invalid_grant. A job
  published before the delivery that finds the moved answer expired gets invalid_grant too (it outlived any deadline).
- another live owner: it waits for that owner's answer (or for the record to be released) until its deadline.

Crash windows, for a worker that dies (SIGKILL) while owning a job; the job is then claimed by another worker
under the same job id, so it finds itself the owner:

1. before the claim: nothing was recorded; the retry starts afresh.
2. after the claim, before ``calling``: the code was never sent; the retry presents it.
3. after ``calling``, before ``session``: WeChat may have used the code and its answer is lost. The code is never
   presented twice: the job is answered 503 "call wx.login() again", final. This window is one WeChat round trip.
4. after ``session``, before ``reply``: the retry reuses the session, WeChat is not called again; the user store's
   upsert is idempotent (the user exists once; at most one unused token row more).
5. after ``reply``, before delivery: the retry sends the stored answer. Writing it, XACK and XDEL are one script.

The gateway, not the worker, marks ``delivered`` (``gateway/jobs.py``), as it hands a final answer to its waiting
client. An answer written for a client that had already given up (a 504, or a 503 after a publish whose outcome
Redis never confirmed) then does not burn the code: that client's retry with the same code gets the stored answer.

Failures that leave the code usable are not final: a WeChat failure that did not use the code (busy, down, rate
limit, breaker open) deletes the record; a user store that stays unavailable after the exchange releases only the
ownership and keeps the session, so a retry with the same code reuses it within the record's TTL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import redis.asyncio as aioredis

from shared.messages import STREAM_FIELD, Reply, WechatSession, encoder, reply_decoder, session_decoder
from shared.redis_keys import RedisKeys
from shared.streamseal import StreamSeal, open_session, seal_session

#: How long a record lives: more than a code's 5 minutes, so a replay never reaches WeChat.
RECORD_TTL_MS = 10 * 60 * 1000

# KEYS: the record, its delivered answer. ARGV[2]: the job's stream id, compared with ``delivered`` exactly.
_CLAIM = """
local function id_above(a, b)
    local am, as = string.match(a, '^(%d+)-(%d+)$')
    local bm, bs = string.match(b, '^(%d+)-(%d+)$')
    if not bm then  -- written by an older gateway: Redis time in ms, a job published in it or after is a replay
        bm, bs = tonumber(b) - 1, math.huge
    end
    am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
    return am > bm or (am == bm and as > bs)
end
local f = redis.call('HMGET', KEYS[1], 'owner', 'owner_deadline', 'reply', 'delivered', 'session', 'calling')
if f[4] and id_above(ARGV[2], f[4]) then return {'replayed'} end
if f[3] then return {'answer', f[3]} end
if f[4] then
    local kept = redis.call('GET', KEYS[2])
    if kept then return {'answer', kept} end
    return {'replayed'}
end
if f[1] and f[1] ~= ARGV[1] and f[2] and tonumber(f[2]) > tonumber(ARGV[3]) then return {'wait'} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'owner_deadline', ARGV[4])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return {'owner', f[5] or '', f[6] or ''}
"""

# ARGV[1] job id, ARGV[2] field, ARGV[3] value: set a field only while the job still owns the record.
_OWNER_SET = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# The first answer wins; every later writer gets it back (a stale owner too, after the delivery: the kept answer, or
# 'replayed' once that has expired). With a final answer the session_key is not needed any more.
# KEYS: the record, its delivered answer.
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
redis.call('HDEL', KEYS[1], 'session')
if redis.call('HEXISTS', KEYS[1], 'delivered') == 0 then redis.call('HSETNX', KEYS[1], 'reply', ARGV[1]) end
local stored = redis.call('HGET', KEYS[1], 'reply') or redis.call('GET', KEYS[2])
if stored then return {'answer', stored} end
return {'replayed'}
"""

# A record with a final answer is never given back: it is what refuses replays.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reply') == 1 or redis.call('HEXISTS', KEYS[1], 'delivered') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'session') == 1 then
    redis.call('HDEL', KEYS[1], 'owner', 'owner_deadline', 'calling')
else
    redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: reply stream, job stream. ARGV: field, payload, reply stream cap, reply stream TTL, group, message id.
# The answer and the acknowledgement happen together or not at all.
_DELIVER = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('XACK', KEYS[2], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[2], ARGV[6])
return 1
"""

# Only while the code has no final answer: after it, a session_key would sit in Redis with nothing to use it.
_STORE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reply') == 1 or redis.call('HEXISTS', KEYS[1], 'delivered') == 1 then return 0 end
return redis.call('HSETNX', KEYS[1], 'session', ARGV[1])
"""


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
    #: ANSWER: the final reply, as its first job got it.
    reply: Reply | None = None


class ExchangeRecords:
    """The Lua scripts, registered once per Redis client; every call takes the record's key."""

    def __init__(self, redis: aioredis.Redis, seal: StreamSeal | None = None) -> None:
        #: Seals the stored session (its session_key); answers are sealed by the job handler before they get here.
        self._seal = seal
        self._claim = redis.register_script(_CLAIM)
        self._owner_set = redis.register_script(_OWNER_SET)
        self._finish = redis.register_script(_FINISH)
        self._release = redis.register_script(_RELEASE)
        self._store_session = redis.register_script(_STORE_SESSION)
        self._deliver = redis.register_script(_DELIVER)

    async def claim(self, key: str, *, job_id: str, stream_id: str, now: float, deadline: float) -> Claim:
        """Decide what the job does with its code (see the module docstring)."""
        raw = await self._claim(
            keys=[key, RedisKeys.delivered_answer(key)],
            args=[job_id, stream_id, repr(now), repr(deadline), RECORD_TTL_MS],
        )
        state = State(raw[0].decode())
        if state is State.ANSWER:
            return Claim(state=state, reply=reply_decoder.decode(raw[1]))
        if state is State.OWNER:
            session = open_session(self._seal, session_decoder.decode(raw[1])) if raw[1] else None
            return Claim(state=state, session=session, interrupted=bool(raw[2]))
        return Claim(state=state)

    async def mark_calling(self, key: str, job_id: str) -> bool:
        """Record that the code is about to be presented; False if the job no longer owns the record."""
        return bool(await self._owner_set(keys=[key], args=[job_id, "calling", "1"]))

    async def store_session(self, key: str, session: WechatSession) -> None:
        await self._store_session(keys=[key], args=[encoder.encode(seal_session(self._seal, session))])

    async def finish(self, key: str, reply: Reply) -> Reply | None:
        """Store ``reply`` as the final answer unless one exists; return the one that stands (``reply`` itself when
        the record has expired), or None when the code's answer was delivered and is no longer kept: a replay."""
        raw = await self._finish(keys=[key, RedisKeys.delivered_answer(key)], args=[encoder.encode(reply)])
        match raw[0]:
            case b"answer":
                stored: Reply = reply_decoder.decode(raw[1])
                return stored
            case b"replayed":
                return None
        return reply

    async def release(self, key: str, job_id: str) -> None:
        """Give the code back: the next job with it starts over (reusing the session, if there is one)."""
        await self._release(keys=[key], args=[job_id])

    async def deliver(
        self,
        reply: Reply,
        *,
        reply_stream: str,
        job_stream: str,
        group: str,
        msg_id: bytes,
        reply_cap: int,
        reply_ttl_ms: int,
    ) -> None:
        """Write ``reply`` for the gateway and acknowledge the job, atomically."""
        await self._deliver(
            keys=[reply_stream, job_stream],
            args=[STREAM_FIELD, encoder.encode(reply), reply_cap, reply_ttl_ms, group, msg_id],
        )
