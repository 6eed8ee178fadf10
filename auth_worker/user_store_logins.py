"""The worker's last hop of a login: the user store finds or creates the user and mints the tokens.

The logins the worker's jobs reach in one turn of its event loop go as one request
(``POST /internal/logins/wechat-miniprogram/batch``, ``shared.messages.WechatLogins``); each keeps its own outcome,
so a batch never fails one login for another's fault, and a failure of the request itself (the user store away, a
timeout) reaches each login as it would have alone, for its job to retry within its deadline. A lone login goes
as before (``POST /internal/logins/wechat-miniprogram``), and so does every login for a minute after a user store
that does not know the batch answered 404 (a rolling upgrade).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import NotFound, error_from_wire
from shared.messages import LoginResult, WechatLogin, WechatLogins
from shared.user_store_client import UserStoreClient

#: Logins per request: the user store runs up to 64 in one transaction (``user_store.logins.MAX_BATCH``).
MAX_BATCH = 64
#: How long, after a 404 for the batch, logins go one by one.
_SINGLE_FOR = 60.0


@dataclass(slots=True)
class _Login:
    login: WechatLogin
    request_id: str
    client_ip: str
    #: Unix time by which the user store must have answered.
    answer_by: float
    fut: asyncio.Future[LoginResult]


class UserStoreLogins:
    def __init__(self, client: UserStoreClient) -> None:
        self._client = client
        self._queue: list[_Login] = []
        self._flush: asyncio.Handle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._single_until = 0.0

    async def login(self, login: WechatLogin, *, request_id: str, client_ip: str, answer_by: float) -> LoginResult:
        """``login``'s result, or the ``MinidoorError`` the user store answered for it."""
        loop = asyncio.get_running_loop()
        entry = _Login(login, request_id, client_ip, answer_by, loop.create_future())
        self._queue.append(entry)
        if self._flush is None:
            self._flush = loop.call_soon(self._send_queued)
        return await entry.fut

    def _send_queued(self) -> None:
        self._flush = None
        queued, self._queue = self._queue, []
        for start in range(0, len(queued), MAX_BATCH):
            task = asyncio.create_task(self._send(queued[start : start + MAX_BATCH]), name="user-store-logins")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Login]) -> None:
        if len(batch) == 1 or time.monotonic() < self._single_until:
            await asyncio.gather(*(self._send_one(entry) for entry in batch))
            return
        timeout = min(entry.answer_by for entry in batch) - time.time()
        request = WechatLogins(
            logins=[entry.login for entry in batch],
            request_ids=[entry.request_id for entry in batch],
            client_ips=[entry.client_ip for entry in batch],
        )
        try:
            answer = await self._client.login_wechat_batch(request, timeout=timeout)
        except NotFound:
            self._single_until = time.monotonic() + _SINGLE_FOR
            await asyncio.gather(*(self._send_one(entry) for entry in batch))
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        if len(answer.outcomes) != len(batch):
            _fail(batch, error_from_wire(502, "server_error", "the user store answered another number of logins"))
            return
        for entry, outcome in zip(batch, answer.outcomes, strict=True):
            if entry.fut.done():
                continue
            if outcome.result is not None:
                entry.fut.set_result(outcome.result)
            else:
                error = outcome.error
                entry.fut.set_exception(
                    error_from_wire(
                        outcome.status,
                        error.error if error else "server_error",
                        error.error_description if error else "",
                        outcome.retry_after,
                        message=error.message if error else "",
                        params=error.params if error else None,
                    )
                )

    async def _send_one(self, entry: _Login) -> None:
        try:
            result = await self._client.login_wechat(
                entry.login,
                request_id=entry.request_id,
                timeout=entry.answer_by - time.time(),
                client_ip=entry.client_ip,
            )
        except Exception as exc:
            _fail([entry], exc)
            return
        if not entry.fut.done():
            entry.fut.set_result(result)


def _fail(batch: Sequence[_Login], exc: BaseException) -> None:
    for entry in batch:
        if not entry.fut.done():
            entry.fut.set_exception(exc)
