"""The login path's shared Redis round trips (``shared/redis_batch.py``) and the batched steps built on them, against
the real Redis: concurrent calls share one script call, each caller gets its own items' results, and each step
decides as separate calls in that order would."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import pytest
from redis.exceptions import ResponseError

from auth_worker.exchange import ExchangeRecords, JobEntry, State
from gateway.login_jobs import JobPublisher, ReplyWaiter
from gateway.metrics import GatewayMetrics
from shared.errors import RateLimited
from shared.messages import STREAM_FIELD, LoginFailed, encoder, reply_decoder
from shared.ratelimit import Check, Limit, RateLimiter, limiter_hash_key
from shared.redis_batch import RedisBatcher
from shared.redis_keys import RedisKeys
from shared.redis_scripts import Script


def counting_script() -> Script:
    """Counts its EVALSHAs (the prelude runs once per call) and its items; a fresh source, so Redis has never seen
    it and the first call loads it."""
    return Script(
        f"counting-{secrets.token_hex(4)}",
        keys=("counter", "calls"),
        args=("add",),
        prelude="redis.call('INCR', KEYS[2])",
        body="return redis.call('INCRBY', K[1], A[1])",
    )


class TestBatcher:
    async def test_concurrent_calls_share_one_script_call(self, redis_client, key_prefix):
        """Calls made in one turn of the event loop go as one EVALSHA (loading the script Redis did not know), and
        each caller gets the result of its own item, in the order the items ran."""
        script = RedisBatcher(redis_client).script(counting_script())
        counter, calls = f"{key_prefix}:counter", f"{key_prefix}:calls"
        results = await asyncio.gather(*(script((counter, calls), (1,)) for _ in range(20)))
        assert sorted(results) == list(range(1, 21)) and results == sorted(results)
        assert int(await redis_client.get(calls)) == 1

    async def test_calls_during_a_batch_go_in_the_next(self, redis_client, key_prefix):
        """While a batch is in flight, new calls queue and go together as the next batch."""
        script = RedisBatcher(redis_client).script(counting_script())
        counter, calls = f"{key_prefix}:counter", f"{key_prefix}:calls"
        first = asyncio.ensure_future(script((counter, calls), (1,)))
        await asyncio.sleep(0)  # the first batch is sent on this turn
        later = [asyncio.ensure_future(script((counter, calls), (1,))) for _ in range(5)]
        await asyncio.gather(first, *later)
        assert int(await redis_client.get(calls)) == 2

    async def test_a_call_runs_its_items_together(self, redis_client, key_prefix):
        """One call's items run one after the other in the same batch, each seeing what the one before wrote."""
        script = RedisBatcher(redis_client).script(counting_script())
        counter, calls = f"{key_prefix}:counter", f"{key_prefix}:calls"
        assert await script.run([((counter, calls), (2,)), ((counter, calls), (3,))]) == [2, 5]

    async def test_an_error_fails_every_call_of_its_script(self, redis_client, key_prefix):
        """A script error reaches every caller of that script in the batch, and no other script's caller."""
        batcher = RedisBatcher(redis_client)
        failing = batcher.script(Script("failing", keys=("k",), args=(), body="error('no')"))
        counting = batcher.script(counting_script())
        counter, calls = f"{key_prefix}:counter", f"{key_prefix}:calls"
        outcomes = await asyncio.gather(
            failing((counter,), ()), failing((counter,), ()), counting((counter, calls), (1,)), return_exceptions=True
        )
        assert isinstance(outcomes[0], ResponseError) and isinstance(outcomes[1], ResponseError)
        assert outcomes[2] == 1

    async def test_wrong_arity_is_refused_before_sending(self, redis_client, key_prefix):
        """An item whose keys or arguments do not fit the script never reaches Redis, where it would shift every
        item after it."""
        script = RedisBatcher(redis_client).script(counting_script())
        with pytest.raises(ValueError):
            await script((f"{key_prefix}:counter",), (1,))


class TestRateLimitChecks:
    async def test_checks_after_a_refusal_spend_nothing(self, redis_client, key_prefix):
        """``check_all`` is ``check`` and ``peek`` in order: the first refusal raises and the checks after it
        spend nothing, in the same script call."""
        limiter = RateLimiter(redis_client, RedisKeys(key_prefix), limiter_hash_key("s" * 32, ""))
        first, second = Limit("first", 1, 60), Limit("second", 1, 60)
        await limiter.check_all([Check(first, "k"), Check(second, "other")])
        with pytest.raises(RateLimited) as refused:
            await limiter.check_all([Check(first, "k"), Check(second, "k")])
        assert "first" in refused.value.description
        await limiter.check(second, "k")  # its one request was not spent by the refused call

    async def test_concurrent_requests_keep_their_own_order(self, redis_client, key_prefix):
        """Requests checked at once share a script call, yet a refusal in one never skips another's checks."""
        limiter = RateLimiter(redis_client, RedisKeys(key_prefix), limiter_hash_key("s" * 32, ""))
        limit = Limit("burst", 3, 60)
        outcomes = await asyncio.gather(
            *(limiter.check_all([Check(limit, "ip"), Check(Limit("code", 10, 60), f"c{i}")]) for i in range(5)),
            return_exceptions=True,
        )
        assert [o is None for o in outcomes] == [True, True, True, False, False]


class TestLoginSteps:
    async def test_publishes_of_one_batch_share_the_queue_cap(self, redis_client, key_prefix):
        """Concurrent publishes go in one call, and the cap counts the jobs the call adds: two of three fit."""
        keys = RedisKeys(key_prefix)
        metrics = GatewayMetrics()
        publisher = JobPublisher(redis_client, keys, ReplyWaiter(redis_client, keys), 2, metrics)

        async def login() -> None:
            await publisher.exchange(
                request_id="r", client_id="c", code=uuid.uuid4().hex, username="", avatar="", timeout=0.3
            )

        outcomes = await asyncio.gather(*(login() for _ in range(3)), return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["DeadlineExceeded", "DeadlineExceeded", "Unavailable"]
        assert await redis_client.xlen(keys.job_stream) == 2
        assert metrics.registry.get_sample_value("minidoor_gateway_shed_logins_total", {"reason": "queue_full"}) == 1

    async def test_claim_marks_calling_and_the_answer_is_replied_with_its_ack(self, redis_client, key_prefix):
        """A claim made to present the code sets ``calling``; finishing replies and acknowledges in the same step,
        and a stale owner's later answer is not replied: the first one stands."""
        keys = RedisKeys(key_prefix)
        records = ExchangeRecords(redis_client)
        await redis_client.xgroup_create(keys.job_stream, keys.worker_group, id="0", mkstream=True)
        entry_id = await redis_client.xadd(keys.job_stream, {STREAM_FIELD: b"job"})
        await redis_client.xreadgroup(keys.worker_group, "w", {keys.job_stream: ">"})
        key, now = keys.code_exchange("wx", "client", "code"), time.time()
        claim = await records.claim(key, job_id="a", stream_id="1-0", now=now, deadline=now + 5, call=True)
        assert claim.state is State.OWNER and claim.calling and not claim.interrupted
        assert await redis_client.hget(key, "calling") == b"1"

        entry = JobEntry(keys.reply_stream("g"), keys.job_stream, keys.worker_group, entry_id)
        answer = LoginFailed(job_id="a", status=400, error="invalid_grant", error_description="first", record=key)
        assert (await records.finish_and_reply(key, answer, entry)).replied
        [(_id, fields)] = await redis_client.xrange(keys.reply_stream("g"))
        assert reply_decoder.decode(fields[STREAM_FIELD]) == answer
        assert (await redis_client.xpending(keys.job_stream, keys.worker_group))["pending"] == 0
        assert await redis_client.xlen(keys.job_stream) == 0

        late = LoginFailed(job_id="b", status=400, error="invalid_grant", error_description="late", record=key)
        finished = await records.finish_and_reply(key, late, entry)
        assert not finished.replied and finished.standing == answer
        assert await redis_client.xlen(keys.reply_stream("g")) == 1
        assert await redis_client.hget(key, "reply") == encoder.encode(answer)
