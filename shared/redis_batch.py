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
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
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
        self._max_items = max_items
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        #: The batches go one at a time, over this connection.
        self._conn = RawConnection(redis)

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
        outcomes = await self._conn.execute([_evalsha(group) for group in groups])
        for group, outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, NoScriptError):  # Redis restarted, or never saw it: load it, and again
                script = group[0].script
                _loaded, outcome = await self._conn.execute([("SCRIPT", "LOAD", script.source), _evalsha(group)])
            if isinstance(outcome, Exception):
                _fail(group, outcome)
                continue
            start = 0
            for call in group:
                if not call.fut.done():
                    call.fut.set_result(outcome[start : start + len(call.items)])
                start += len(call.items)


class RawConnection:
    """A connection of its own from ``redis``'s pool (so the client's settings apply, and its ``aclose`` closes it),
    for commands sent without redis-py's per-command layers: all of them in one write, their replies read in order,
    one timeout for the whole round trip (the client's ``socket_timeout``, plus ``extra`` for a blocking read). A
    failed connection is retried once at once, as the services' clients do (``Retry(NoBackoff(), 1)``): it may have
    gone stale while Redis restarted. One caller at a time."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._conn: AbstractConnection | None = None
        self._timeout: float | None = None

    async def execute(self, commands: Sequence[tuple[EncodableT, ...]], *, extra: float = 0.0) -> list[Any]:
        """The replies of ``commands``, in order; a command's error reply (``ResponseError``) stands in its place."""
        packed = b"".join(_pack(command) for command in commands)
        for attempt in (1, 2):
            conn = await self._connection()
            timeout = None if self._timeout is None else self._timeout + extra
            try:
                async with asyncio.timeout(timeout):
                    await conn.send_packed_command(packed, check_health=False)
                    replies: list[Any] = []
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response())
                        except ResponseError as exc:
                            replies.append(exc)
                return replies
            except TimeoutError:
                await conn.disconnect(nowait=True)
                raise RedisTimeoutError(f"Redis did not answer within {timeout} s") from None
            except (RedisConnectionError, OSError):
                await conn.disconnect(nowait=True)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _connection(self) -> AbstractConnection:
        if self._conn is None:
            conn = await self._redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            self._timeout = conn.socket_timeout
            conn.socket_timeout = None  # the round trip's own timeout applies instead of one per read and write
            self._conn = conn
        return self._conn


def _evalsha(calls: list[_Call]) -> tuple[EncodableT, ...]:
    keys, args = _flat(calls)
    return ("EVALSHA", calls[0].script.sha, len(keys), *keys, *args)


def _pack_py(command: tuple[EncodableT, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif isinstance(arg, float):
            arg = repr(arg).encode()
        elif not isinstance(arg, bytes):
            arg = bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


_pack: Callable[[tuple[EncodableT, ...]], bytes]
try:
    from hiredis import pack_command as _hiredis_pack

    _pack = cast(Callable[[tuple[EncodableT, ...]], bytes], _hiredis_pack)
except ImportError:  # pragma: no cover - hiredis is a dependency; this keeps a bare environment working
    _pack = _pack_py


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
