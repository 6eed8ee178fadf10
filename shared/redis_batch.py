"""Script calls that concurrent requests or jobs make at about the same time, sent to Redis in one round trip.

A caller awaits its own items' results as if it ran the script alone. The first call starts a sender task, which
runs on the event loop's next turn: every call made in the meantime (by the other requests and jobs that turn of the
loop runs) joins its batch, whatever its script. The batch is one EVALSHA per script, each with the items of all
its calls, and those EVALSHAs go as one pipeline: one write, one read, one wake-up of Redis. While a batch is in
flight, new calls queue and go as the next batch once it returns, so batches grow with the load instead of the
number of round trips. A lone call costs one EVALSHA, as before.

Each script (``shared/redis_scripts.py``) runs its items in order, one after the other, so an item sees what the items
before it wrote, exactly as separate calls in that order would; calls of different scripts in one batch come from
different callers, none waiting on another. A Redis error fails every call it touched with the same exception; a
call whose caller has gone (cancelled, timed out) is still sent, as a sent command would have run.

One ``RedisBatcher`` per Redis client and process: the gateway's and the worker's resources share theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

from shared.redis_scripts import Script

#: Items per batch: Redis runs one script at a time, so a batch this size holds it for about a millisecond.
MAX_ITEMS = 256

Item = tuple[Sequence[KeyT], Sequence[EncodableT]]


class BatchedScript:
    """One script, called through a ``RedisBatcher``; by its SHA1, loaded when Redis does not know it (at first,
    after a restart)."""

    def __init__(self, batcher: RedisBatcher, script: Script) -> None:
        self.batcher = batcher
        self.script = script
        self.source = script.source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """The result of one item."""
        (result,) = await self.run([(keys, args)])
        return result

    async def run(self, items: Sequence[Item]) -> list[Any]:
        """The results of ``items``, in order; they are sent together, in one batch."""
        for keys, args in items:
            if len(keys) != len(self.script.keys) or len(args) != len(self.script.args):
                raise ValueError(f"{self.script.name} takes keys {self.script.keys} and args {self.script.args}")
        return await self.batcher.submit(self, items)


class _Call:
    __slots__ = ("fut", "items", "script")

    def __init__(self, script: BatchedScript, items: Sequence[Item], fut: asyncio.Future[list[Any]]) -> None:
        self.script = script
        self.items = items
        self.fut = fut


class RedisBatcher:
    def __init__(self, redis: aioredis.Redis, *, max_items: int = MAX_ITEMS) -> None:
        self._redis = redis
        self._max_items = max_items
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    def script(self, script: Script) -> BatchedScript:
        return BatchedScript(self, script)

    async def submit(self, script: BatchedScript, items: Sequence[Item]) -> list[Any]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(script, items, fut))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="redis-batch")
        return await fut

    async def _send(self) -> None:
        calls: list[_Call] = []
        try:
            while self._queue:
                calls = self._take()
                try:
                    await self._run(calls)
                except Exception as exc:
                    _fail(calls, exc)
                calls = []
        except asyncio.CancelledError:
            for call in calls + self._queue:
                call.fut.cancel()
            self._queue.clear()
            raise
        finally:
            self._sender = None

    def _take(self) -> list[_Call]:
        """The calls of the next batch: the oldest first, whole, up to ``max_items`` items (at least one call)."""
        count = items = 0
        for call in self._queue:
            if count and items + len(call.items) > self._max_items:
                break
            count += 1
            items += len(call.items)
        calls, self._queue = self._queue[:count], self._queue[count:]
        return calls

    async def _run(self, calls: list[_Call]) -> None:
        by_script: dict[str, list[_Call]] = {}
        for call in calls:
            by_script.setdefault(call.script.sha, []).append(call)
        groups = list(by_script.values())
        if len(groups) == 1:
            outcomes: list[Any] = [await self._evalsha(groups[0])]
        else:
            pipe = self._redis.pipeline(transaction=False)
            for group in groups:
                script = group[0].script
                keys, args = _flat(group)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            outcomes = await pipe.execute(raise_on_error=False)
        for group, outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, NoScriptError):
                try:
                    outcome = await self._evalsha(group)
                except Exception as exc:
                    outcome = exc
            if isinstance(outcome, Exception):
                _fail(group, outcome)
                continue
            start = 0
            for call in group:
                if not call.fut.done():
                    call.fut.set_result(outcome[start : start + len(call.items)])
                start += len(call.items)

    async def _evalsha(self, group: list[_Call]) -> list[Any]:
        """One script's calls in one EVALSHA; loads the script first if Redis forgot it."""
        script = group[0].script
        keys, args = _flat(group)
        try:
            results: list[Any] = await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(script.source)
            results = await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        return results


def _flat(calls: list[_Call]) -> tuple[list[KeyT], list[EncodableT]]:
    keys: list[KeyT] = []
    args: list[EncodableT] = []
    for call in calls:
        for item_keys, item_args in call.items:
            keys.extend(item_keys)
            args.extend(item_args)
    return keys, args


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        if not call.fut.done():
            call.fut.set_exception(exc)
