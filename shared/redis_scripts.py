"""Every Lua script minidoor runs in Redis, each with its KEYS/ARGV contract, and the protocol the login's scripts
share: a login is a job on the job stream, settled through its code's exchange record, answered on its gateway's
reply stream, and marked delivered by that gateway.

The job stream (``RedisKeys.job_stream``, consumer group ``RedisKeys.worker_group``): the gateway adds a job with
``PUBLISH`` unless the queue is full or too slow; a worker reads it (XREADGROUP), and acknowledges and deletes it in
the same script that writes its reply (``REPLY``), or alone when the job expired.

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

Rate limits (``RedisKeys.rate_limit``): ``GCRA``, one key's budget under one limit (``shared/ratelimit.py``).
"""

from __future__ import annotations

#: How long a record lives: more than a code's 5 minutes, so a replay never reaches WeChat.
RECORD_TTL_MS = 10 * 60 * 1000

# --- The job stream ------------------------------------------------------------------------------------------------

#: The gateway publishes a job, unless the queue cannot serve it in time. KEYS[1] the job stream. ARGV: the stream's
#: cap, the worker group, the longest (ms) the oldest job no worker has taken may have waited, the entry's field, the
#: job. Returns ``{'ok', id}``, ``{'full'}`` or ``{'slow', waited_ms}``.
PUBLISH = """
local len = redis.call('XLEN', KEYS[1])
if len >= tonumber(ARGV[1]) then return {'full'} end
if len > 0 then
    local after = '0-0'
    local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
    if type(groups) == 'table' and not groups.err then
        for _, g in ipairs(groups) do
            local name, last
            for i = 1, #g, 2 do
                if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
            end
            if name == ARGV[2] then after = last end
        end
    end
    -- The first entry after the group's last delivered id is the oldest job no worker has taken yet.
    local ahead = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 2)
    local oldest = ahead[1]
    if oldest and oldest[1] == after then oldest = ahead[2] end
    if oldest then
        local t = redis.call('TIME')
        local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local waited = now_ms - tonumber(string.match(oldest[1], '^(%d+)'))
        if waited > tonumber(ARGV[3]) then return {'slow', waited} end
    end
end
return {'ok', redis.call('XADD', KEYS[1], '*', ARGV[4], ARGV[5])}
"""

# --- The exchange record: the worker's steps -----------------------------------------------------------------------

#: A job claims its code's record (see the module docstring). KEYS: the record, its delivered answer. ARGV: the job
#: id, its stream id (compared with ``delivered`` exactly), now and the job's deadline (Unix seconds), the record's
#: TTL (ms). Returns ``{'replayed'}``, ``{'answer', reply}``, ``{'wait'}`` or ``{'owner', session or '', calling or
#: ''}``.
CLAIM = """
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

#: Set a field of the record only while the job still owns it (``calling``). KEYS[1] the record. ARGV: the job id,
#: the field, its value. Returns 1, or 0 when another job owns the record.
OWNER_SET = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

#: Keep WeChat's answer, only while the code has no final answer: after it, a session_key would sit in Redis with
#: nothing to use it. KEYS[1] the record. ARGV[1] the session (``WechatSession``, sealed). Returns 1 if stored.
STORE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reply') == 1 or redis.call('HEXISTS', KEYS[1], 'delivered') == 1 then return 0 end
return redis.call('HSETNX', KEYS[1], 'session', ARGV[1])
"""

#: The code's final answer: the first one wins, and every later writer gets it back (a stale owner too, after the
#: delivery: the kept answer, or 'replayed' once that has expired). With a final answer the session_key is not needed
#: any more. KEYS: the record, its delivered answer. ARGV[1] the answer. Returns ``{'gone'}`` (no record),
#: ``{'answer', the standing answer}`` or ``{'replayed'}``.
FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
redis.call('HDEL', KEYS[1], 'session')
if redis.call('HEXISTS', KEYS[1], 'delivered') == 0 then redis.call('HSETNX', KEYS[1], 'reply', ARGV[1]) end
local stored = redis.call('HGET', KEYS[1], 'reply') or redis.call('GET', KEYS[2])
if stored then return {'answer', stored} end
return {'replayed'}
"""

#: Give the code back: the next job with it starts over (reusing the session, if there is one). A record with a final
#: answer is never given back: it is what refuses replays. KEYS[1] the record. ARGV[1] the job id. Returns 1 if
#: released.
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reply') == 1 or redis.call('HEXISTS', KEYS[1], 'delivered') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'session') == 1 then
    redis.call('HDEL', KEYS[1], 'owner', 'owner_deadline', 'calling')
else
    redis.call('DEL', KEYS[1])
end
return 1
"""

#: The worker's reply and the job's acknowledgement, together or not at all. KEYS: the gateway's reply stream, the
#: job stream. ARGV: the entry's field, the reply, the reply stream's cap and TTL (ms), the worker group, the job's
#: stream id. Returns 1.
REPLY = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('XACK', KEYS[2], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[2], ARGV[6])
return 1
"""

# --- The exchange record: the gateway's step -----------------------------------------------------------------------

#: The gateway hands a final answer to its client (see "Delivery" above). KEYS: the record, its delivered answer, the
#: job stream. ARGV[1] how long (ms) jobs published before now may still wait. Returns 1 if this call marked it.
MARK_DELIVERED = """
local reply = redis.call('HGET', KEYS[1], 'reply')
if not reply or redis.call('HEXISTS', KEYS[1], 'delivered') == 1 then return 0 end
local last
if redis.call('EXISTS', KEYS[3]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[3])
    for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then last = info[i + 1] end
    end
else  -- no stream (it was lost): no job is waiting, and the next one gets an id from the clock
    local t = redis.call('TIME')
    -- the millisecond before now, at its last id: every id made from now on is above it
    last = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 1) .. '-18446744073709551615'
end
redis.call('HSET', KEYS[1], 'delivered', last)
redis.call('SET', KEYS[2], reply, 'PX', ARGV[1])
redis.call('HDEL', KEYS[1], 'reply')
return 1
"""

# --- Rate limits ---------------------------------------------------------------------------------------------------

#: GCRA: KEYS[1] holds the theoretical arrival time (TAT, ms), KEYS[2] marks a period's first refusal. ARGV: emission
#: interval (ms), tolerance (ms, the whole period: a full burst), cost (0 = peek). Returns ``{allowed,
#: retry_after_ms, first_refusal}``: a refusal sets KEYS[2] for one period, and only the one that set it is audited.
#: Redis's clock, not the callers': replicas with skewed clocks still agree.
GCRA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now_ms
if tat < now_ms then tat = now_ms end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if cost == 0 then allow_at = tat + interval - tolerance end
if allow_at > now_ms then
  local first = redis.call('SET', KEYS[2], 1, 'NX', 'PX', math.max(1, math.ceil(tolerance)))
  return {0, allow_at - now_ms, first and 1 or 0}
end
if cost > 0 then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now_ms)))
end
return {1, 0, 0}
"""
