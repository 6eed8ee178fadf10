"""The gateway's client_id cache: fresh answers, short-lived misses, stale answers while the user store is away."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.applications import ApplicationCache
from shared.errors import Unauthorized, Unavailable
from shared.messages import ApplicationInfo

APP = ApplicationInfo(client_id="c1", name="shop", organization="acme", enable_sign_up=True, miniprogram_appid="wx1")


class _UserStore:
    """Stands in for the user store's HTTP client: answers from a script of results, counting calls."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls = 0

    async def get_application(self, client_id: str, *, request_id: str = "") -> ApplicationInfo:
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, ApplicationInfo)
        return result


class TestApplicationCache:
    async def test_hit_within_ttl(self) -> None:
        """A second lookup within the TTL does not ask the user store again."""
        store = _UserStore(APP)
        cache = ApplicationCache(store, ttl=30)  # type: ignore[arg-type]
        assert await cache.get("c1") == APP
        assert await cache.get("c1") == APP
        assert store.calls == 1

    async def test_unknown_client_is_remembered_briefly(self) -> None:
        """An unknown client_id raises Unauthorized, cached for a fifth of the TTL."""
        store = _UserStore(Unauthorized("client_id is invalid"), APP)
        cache = ApplicationCache(store, ttl=0.05)  # type: ignore[arg-type]
        with pytest.raises(Unauthorized):
            await cache.get("c1")
        with pytest.raises(Unauthorized):
            await cache.get("c1")
        assert store.calls == 1

    async def test_stale_entry_served_while_user_store_is_down(self) -> None:
        """After the TTL, a user store that cannot answer does not turn a known client into an error."""
        store = _UserStore(APP, Unavailable("down"), Unavailable("down"))
        # A TTL of 0: the entry is past it as soon as it is stored (the cache has no clock to move), so no sleep.
        cache = ApplicationCache(store, ttl=0)  # type: ignore[arg-type]
        await cache.get("c1")
        assert await cache.get("c1") == APP
        assert store.calls == 2

    async def test_unavailable_without_entry_raises(self) -> None:
        """With nothing cached, the user store being down is a 503 for the caller."""
        cache = ApplicationCache(_UserStore(Unavailable("down")), ttl=30)  # type: ignore[arg-type]
        with pytest.raises(Unavailable):
            await cache.get("c1")
