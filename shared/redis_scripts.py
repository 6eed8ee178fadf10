"""Every Lua script minidoor runs in Redis, each with its KEYS/ARGV contract, and the protocol the login's scripts
share: a login is a job on the job stream, settled through its code's exchange record, answered on its gateway's
reply stream, and marked delivered by that gateway.

The job stream (``RedisKeys.job_stream``, consumer group ``RedisKeys.worker_group``): the gateway adds a job with
``PUBLISH`` unless the queue is full or too slow; a worker reads it (XREADGROUP), and acknowledges and deletes it in
the same script that writes its reply (``REPLY``, ``FINISH_AND_REPLY``), or alone when the job expired.

The exchange record (``RedisKeys.code_exchange``): a hash per (appid, client, sha256(code)) that every job for that
code goes through, so the code is presented to WeChat at most once. It lives ``RECORD_TTL_MS`` (more than a code's
5 minutes, short because it briefly holds a ``session_key``) and has:

    owner, owner_deadline   the job working on the exchange, and when its client stops waiting
    calling                 set just before the code is presented to WeChat
    session                 the jscode2session result (``WechatSession``), stored before anything else can fail
    reply                   the final answer (a token or a final error), written once; the session goes then
    delivered               the job stream's last id when a gateway first handed the final answer to its client

Delivery: a final answer names its record (``LoginSucceeded.record``, ``LoginFailed.record``). The gateway, not the
worker, marks the record delivered (``MARK_DELIVERED``) just before handing the answer to its waiting client. An
answer written for a client that had already given up (a 504, or a 503 after a publish whose outcome Redis never
confirmed) then does not burn the code: that client's retry with the same code gets the stored answer. Marking
records the job stream's last generated id, so every job published before the delivery has an id at or below it,
and every later one above. The answer then moves out of the record to ``RedisKeys.delivered_answer(record)``, which
expires when no job published before the delivery can still wait for it (the longest login timeout any gateway may
have, plus a margin): the record keeps refusing replays for its whole TTL without holding a live token that long.
Workers that know this move must be deployed before gateways that make it.

What a job finds when it claims the record (``CLAIM``, so every decision is atomic):

- nothing, or a released record, or an owner whose client gave up: it becomes the owner.
- the final answer: it answers the same (a double tap gets the token the first tap got), unless the job was
  published after the delivery (its stream id is above ``delivered``): a replay, answered 400 invalid_grant. A job
  published before the delivery that finds the moved answer expired gets invalid_grant too (it outlived any deadline).
- another live owner: it waits for that owner's answer (or for the record to be released) until its deadline.

The worker's side of each step, and its crash windows, are in ``auth_worker/exchange.py``.

WeChat's access token (``RedisKeys.wechat_token``): one per AppID for the whole cluster, refreshed by whoever holds
``wechat_token_lock``; the lock's value is a fencing token (``TOKEN_LOCK``), and a refresh writes its token only while
it still holds the lock with that fencing token (``TOKEN_STORE``): a refresher that stalled past its lock's TTL cannot
overwrite a newer token. The steps and the 40001 path are in ``auth_worker/access_token.py``.

Rate limits (``RedisKeys.rate_limit``): ``GCRA``, one key's budget under one limit (``shared/ratelimit.py``).

Every script here takes a batch: its keys and arguments are those of one item (a job, a record, a limit) repeated,
and it answers a list with one result per item, in order. Its ``body`` runs once per item, with the item's keys in
``K`` and its arguments in ``A``, after a ``prelude`` the items of one call share (a clock reading, a queue's
length). So the calls that concurrent requests and jobs make at once go to Redis as one EVALSHA
(``shared/redis_batch.py``), and each item is decided as if it ran alone, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How long a record lives: more than a code's 5 minutes, so a replay never reaches WeChat.
RECORD_TTL_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Script:
    """A Redis step for any number of items: ``keys`` and ``args`` name one item's KEYS and ARGV, in order."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    #: Lua run once per item: ``K[i]`` is the item's i-th key, ``A[i]`` its i-th argument; returns the item's result.
    body: str
    #: Lua run once per call before the first item: locals and functions the items share.
    prelude: str = ""

    @property
    def source(self) -> str:
        nk, na = len(self.keys), len(self.args)
        return (
            f"-- minidoor {self.name}: one result per item of {nk} keys and {na} arguments\n"
            f"{self.prelude}\n"
            f"local function item(K, A)\n{self.body}\nend\n"
            f"local out = {{}}\n"
            f"for i = 0, #KEYS / {nk} - 1 do\n"
            f"    local K, A = {{}}, {{}}\n"
            f"    for j = 1, {nk} do K[j] = KEYS[i * {nk} + j] end\n"
            f"    for j = 1, {na} do A[j] = ARGV[i * {na} + j] end\n"
            f"    out[i + 1] = item(K, A)\n"
            f"end\n"
            f"return out\n"
        )


#: Milliseconds of Redis's clock, for the items of one call alike.
_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# --- The job stream ------------------------------------------------------------------------------------------------

#: The gateway publishes a job, unless the queue cannot serve it in time: when the stream holds ``cap`` entries, or
#: when the oldest job no worker has taken yet has waited more than ``max_wait_ms``. Returns ``{'ok', id}``,
#: ``{'full'}`` or ``{'slow', waited_ms}``. The queue is read once per call; the jobs this call adds count toward the
#: cap, and have waited nothing.
PUBLISH = Script(
    "publish",
    keys=("job_stream",),
    args=("cap", "group", "max_wait_ms", "field", "job"),
    prelude=_NOW_MS
    + """
local queues = {}
local function queue(stream, group)
    local q = queues[stream]
    if q then return q end
    q = {len = redis.call('XLEN', stream), waited = 0}
    queues[stream] = q
    if q.len == 0 then return q end
    local after = '0-0'
    local groups = redis.pcall('XINFO', 'GROUPS', stream)
    if type(groups) == 'table' and not groups.err then
        for _, g in ipairs(groups) do
            local name, last
            for i = 1, #g, 2 do
                if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
            end
            if name == group then after = last end
        end
    end
    -- The first entry after the group's last delivered id is the oldest job no worker has taken yet.
    local ahead = redis.call('XRANGE', stream, after, '+', 'COUNT', 2)
    local oldest = ahead[1]
    if oldest and oldest[1] == after then oldest = ahead[2] end
    if oldest then q.waited = now_ms - tonumber(string.match(oldest[1], '^(%d+)')) end
    return q
end
""",
    body="""
local q = queue(K[1], A[2])
if q.len >= tonumber(A[1]) then return {'full'} end
if q.waited > tonumber(A[3]) then return {'slow', q.waited} end
q.len = q.len + 1
return {'ok', redis.call('XADD', K[1], '*', A[4], A[5])}
""",
)

# --- The exchange record: the worker's steps -----------------------------------------------------------------------

#: A job claims its code's record (see the module docstring); ``stream_id`` is compared with ``delivered`` exactly,
#: ``now`` and ``deadline`` are Unix seconds. With ``call`` 1, a job that becomes the owner of a record holding
#: neither a session nor ``calling`` also sets ``calling``: it presents the code next. Returns ``{'replayed'}``,
#: ``{'answer', reply}``, ``{'wait'}`` or ``{'owner', session or '', calling before the claim or '', calling set now
#: (1) or 0}``.
CLAIM = Script(
    "claim",
    keys=("record", "delivered_answer"),
    args=("job_id", "stream_id", "now", "deadline", "ttl_ms", "call"),
    prelude="""
local function id_above(a, b)
    local am, as = string.match(a, '^(%d+)-(%d+)$')
    local bm, bs = string.match(b, '^(%d+)-(%d+)$')
    if not bm then  -- written by an older gateway: Redis time in ms, a job published in it or after is a replay
        bm, bs = tonumber(b) - 1, math.huge
    end
    am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
    return am > bm or (am == bm and as > bs)
end
""",
    body="""
local f = redis.call('HMGET', K[1], 'owner', 'owner_deadline', 'reply', 'delivered', 'session', 'calling')
if f[4] and id_above(A[2], f[4]) then return {'replayed'} end
if f[3] then return {'answer', f[3]} end
if f[4] then
    local kept = redis.call('GET', K[2])
    if kept then return {'answer', kept} end
    return {'replayed'}
end
if f[1] and f[1] ~= A[1] and f[2] and tonumber(f[2]) > tonumber(A[3]) then return {'wait'} end
local calling = 0
if A[6] == '1' and not f[5] and not f[6] then
    redis.call('HSET', K[1], 'owner', A[1], 'owner_deadline', A[4], 'calling', '1')
    calling = 1
else
    redis.call('HSET', K[1], 'owner', A[1], 'owner_deadline', A[4])
end
if redis.call('PTTL', K[1]) < 0 then redis.call('PEXPIRE', K[1], A[5]) end
return {'owner', f[5] or '', f[6] or '', calling}
""",
)

#: Set a field of the record (``calling``) only while the job still owns it. Returns 1, or 0 when another job owns
#: the record.
OWNER_SET = Script(
    "owner_set",
    keys=("record",),
    args=("job_id", "field", "value"),
    body="""
if redis.call('HGET', K[1], 'owner') ~= A[1] then return 0 end
redis.call('HSET', K[1], A[2], A[3])
return 1
""",
)

#: Keep WeChat's answer (``WechatSession``, sealed), only while the code has no final answer: after it, a session_key
#: would sit in Redis with nothing to use it. Returns 1 if stored.
STORE_SESSION = Script(
    "store_session",
    keys=("record",),
    args=("session",),
    body="""
if redis.call('EXISTS', K[1]) == 0 then return 0 end
if redis.call('HEXISTS', K[1], 'reply') == 1 or redis.call('HEXISTS', K[1], 'delivered') == 1 then return 0 end
return redis.call('HSETNX', K[1], 'session', A[1])
""",
)

_FINISH = """
local function finish(record, kept, answer)
    if redis.call('EXISTS', record) == 0 then return {'gone'} end
    redis.call('HDEL', record, 'session')
    if redis.call('HEXISTS', record, 'delivered') == 0 then redis.call('HSETNX', record, 'reply', answer) end
    local stored = redis.call('HGET', record, 'reply') or redis.call('GET', kept)
    if stored then return {'answer', stored} end
    return {'replayed'}
end
"""

_REPLY = """
local function reply(stream, jobs, field, payload, cap, ttl_ms, group, id)
    redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', field, payload)
    redis.call('PEXPIRE', stream, ttl_ms)
    redis.call('XACK', jobs, group, id)
    redis.call('XDEL', jobs, id)
end
"""

#: The code's final answer: the first one wins, and every later writer gets it back (a stale owner too, after the
#: delivery: the kept answer, or 'replayed' once that has expired). With a final answer the session_key is not needed
#: any more. Returns ``{'gone'}`` (no record), ``{'answer', the standing answer}`` or ``{'replayed'}``.
FINISH = Script(
    "finish",
    keys=("record", "delivered_answer"),
    args=("answer",),
    prelude=_FINISH,
    body="return finish(K[1], K[2], A[1])",
)

#: The worker's reply on the gateway's reply stream (capped, its TTL renewed) and the job's acknowledgement (XACK and
#: XDEL of its entry), together or not at all. Returns 1.
REPLY = Script(
    "reply",
    keys=("reply_stream", "job_stream"),
    args=("field", "reply", "reply_cap", "reply_ttl_ms", "group", "entry_id"),
    prelude=_REPLY,
    body="""
reply(K[1], K[2], A[1], A[2], A[3], A[4], A[5], A[6])
return 1
""",
)

#: ``FINISH`` then, when ``answer`` is the one that stands (or the record is gone), ``REPLY`` with it: the common end
#: of a job, one step. Returns ``{'replied'}``, or what ``FINISH`` returned when another answer stands (the worker
#: replies that one, under its own job id) or the code was replayed.
FINISH_AND_REPLY = Script(
    "finish_and_reply",
    keys=("record", "delivered_answer", "reply_stream", "job_stream"),
    args=("answer", "field", "reply_cap", "reply_ttl_ms", "group", "entry_id"),
    prelude=_FINISH + _REPLY,
    body="""
local standing = finish(K[1], K[2], A[1])
if standing[1] == 'gone' or standing[2] == A[1] then
    reply(K[3], K[4], A[2], A[1], A[3], A[4], A[5], A[6])
    return {'replied'}
end
return standing
""",
)

#: Give the code back: the next job with it starts over (reusing the session, if there is one). A record with a final
#: answer is never given back: it is what refuses replays. Returns 1 if released.
RELEASE = Script(
    "release",
    keys=("record",),
    args=("job_id",),
    body="""
if redis.call('HGET', K[1], 'owner') ~= A[1] then return 0 end
if redis.call('HEXISTS', K[1], 'reply') == 1 or redis.call('HEXISTS', K[1], 'delivered') == 1 then return 0 end
if redis.call('HEXISTS', K[1], 'session') == 1 then
    redis.call('HDEL', K[1], 'owner', 'owner_deadline', 'calling')
else
    redis.call('DEL', K[1])
end
return 1
""",
)

# --- WeChat's access token ----------------------------------------------------------------------------------------

#: Take the refresh lock of an AppID's token for ``ttl_ms``. Returns the new fencing token (a counter that only
#: grows), or 0 while another holds the lock.
TOKEN_LOCK = Script(
    "token_lock",
    keys=("lock", "fence"),
    args=("ttl_ms",),
    body="""
if redis.call('EXISTS', K[1]) == 1 then return 0 end
local fence = redis.call('INCR', K[2])
redis.call('SET', K[1], fence, 'PX', tonumber(A[1]))
return fence
""",
)

#: Write a refreshed token and release the lock, only if the lock is still held with ``fence``. The hash lives
#: ``ttl_ms`` (its expiry). Returns 1 if written.
TOKEN_STORE = Script(
    "token_store",
    keys=("cache", "lock"),
    args=("fence", "token", "expires_at_ms", "ttl_ms"),
    body="""
if redis.call('GET', K[2]) ~= A[1] then return 0 end
redis.call('HSET', K[1], 'token', A[2], 'expires_at_ms', A[3], 'fence', A[1])
redis.call('PEXPIRE', K[1], math.max(1, tonumber(A[4])))
redis.call('DEL', K[2])
return 1
""",
)

#: Release the lock if it is still held with ``fence``. Returns 1 if released.
TOKEN_UNLOCK = Script(
    "token_unlock",
    keys=("lock",),
    args=("fence",),
    body="""
if redis.call('GET', K[1]) ~= A[1] then return 0 end
redis.call('DEL', K[1])
return 1
""",
)

# --- The exchange record: the gateway's step -----------------------------------------------------------------------

#: The gateway hands a final answer to its client (see "Delivery" above); ``keep_ms`` is how long jobs published
#: before now may still wait. Returns 1 if this call marked it. The job stream's last id is read once per call: no
#: job is published while a script runs.
MARK_DELIVERED = Script(
    "mark_delivered",
    keys=("record", "delivered_answer", "job_stream"),
    args=("keep_ms",),
    prelude=_NOW_MS
    + """
local last_ids = {}
local function last_id(stream)
    if last_ids[stream] then return last_ids[stream] end
    local last
    if redis.call('EXISTS', stream) == 1 then
        local info = redis.call('XINFO', 'STREAM', stream)
        for i = 1, #info, 2 do
            if info[i] == 'last-generated-id' then last = info[i + 1] end
        end
    else  -- no stream (it was lost): no job is waiting, and the next one gets an id from the clock
        -- the millisecond before now, at its last id: every id made from now on is above it
        last = (now_ms - 1) .. '-18446744073709551615'
    end
    last_ids[stream] = last
    return last
end
""",
    body="""
local reply = redis.call('HGET', K[1], 'reply')
if not reply or redis.call('HEXISTS', K[1], 'delivered') == 1 then return 0 end
redis.call('HSET', K[1], 'delivered', last_id(K[3]))
redis.call('SET', K[2], reply, 'PX', A[1])
redis.call('HDEL', K[1], 'reply')
return 1
""",
)

# --- Rate limits ---------------------------------------------------------------------------------------------------

#: GCRA: ``tat`` holds the theoretical arrival time (ms); ``interval_ms`` is the emission interval, ``tolerance_ms``
#: the whole period (a full burst), ``cost`` 0 a peek. Returns ``{allowed, retry_after_ms, first_refusal}``: a refusal
#: sets ``refused`` for one period, and only the one that set it is audited. An item with ``chained`` 1 belongs to the
#: same request as the one before it: once that is refused (or skipped), it is skipped, ``{2, 0, 0}``, and spends
#: nothing. Redis's clock, not the callers': replicas with skewed clocks still agree.
GCRA = Script(
    "gcra",
    keys=("tat", "refused"),
    args=("interval_ms", "tolerance_ms", "cost", "chained"),
    prelude=_NOW_MS + "local refused = false\n",
    body="""
if A[4] == '1' and refused then return {2, 0, 0} end
refused = false
local interval = tonumber(A[1])
local tolerance = tonumber(A[2])
local cost = tonumber(A[3])
local tat = tonumber(redis.call('GET', K[1])) or now_ms
if tat < now_ms then tat = now_ms end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if cost == 0 then allow_at = tat + interval - tolerance end
if allow_at > now_ms then
    refused = true
    local first = redis.call('SET', K[2], 1, 'NX', 'PX', math.max(1, math.ceil(tolerance)))
    return {0, allow_at - now_ms, first and 1 or 0}
end
if cost > 0 then
    redis.call('SET', K[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now_ms)))
end
return {1, 0, 0}
""",
)
