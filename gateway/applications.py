"""A short-lived cache of client_id lookups, so a login costs no user-store round trip in the common case."""

from __future__ import annotations

import time

from shared.errors import MinidoorError, Unauthorized, Unavailable
from shared.messages import ApplicationInfo
from shared.user_store_client import UserStoreClient

_MAX_ENTRIES = 10_000
#: How long past its TTL a known application is still served when the user store cannot be asked.
_STALE_GRACE = 600.0


class ApplicationCache:
    def __init__(self, client: UserStoreClient, ttl: float) -> None:
        self._client = client
        self._ttl = ttl
        self._entries: dict[str, tuple[float, ApplicationInfo | MinidoorError]] = {}

    async def get(self, client_id: str, *, request_id: str = "") -> ApplicationInfo:
        """The application for ``client_id``; raises ``Unauthorized`` (cached briefly) when there is none."""
        now = time.monotonic()
        hit = self._entries.get(client_id)
        if hit is not None and hit[0] > now:
            value = hit[1]
        else:
            try:
                value = await self._client.get_application(client_id, request_id=request_id)
                expires = now + self._ttl
            except Unauthorized as exc:
                # Unknown ids expire sooner: an application created a moment ago should work almost at once.
                value, expires = exc, now + self._ttl / 5
            except Unavailable:
                # While the user store restarts, a known application stays known: logins keep flowing.
                if hit is not None and isinstance(hit[1], ApplicationInfo) and now - hit[0] < _STALE_GRACE:
                    return hit[1]
                raise
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[client_id] = (expires, value)
        if isinstance(value, MinidoorError):
            error = Unauthorized(value.description)
            error.message, error.params = value.message, value.params  # translated as the user store's
            raise error
        return value

    def peek(self, client_id: str) -> ApplicationInfo | None:
        """The application of ``client_id`` if it is cached, however old; never asks the user store."""
        hit = self._entries.get(client_id)
        return hit[1] if hit is not None and isinstance(hit[1], ApplicationInfo) else None
