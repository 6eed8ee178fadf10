"""One tenant's expensive requests (argon2id password changes) must not slow down another organization's."""

from __future__ import annotations

import asyncio
import secrets
import time

from tests.account_helpers import bearer, other_org_app
from tests.oauth_helpers import basic, stack_login


async def test_password_changes_do_not_starve_another_organization(session, stack):
    """40 concurrent password changes by one user: another organization's introspections all answer 200 within
    1 s, no change answers 5xx, and those beyond 3 at once for that user answer 429 with Retry-After."""
    user = await stack_login(session, stack, f"o-{secrets.token_hex(6)}")
    other = other_org_app(stack, f"org-{secrets.token_hex(4)}")
    other_auth = basic(other["clientId"], other["clientSecret"])
    started = asyncio.Event()

    async def change(i: int) -> tuple[int, str | None]:
        started.set()
        async with session.post(
            stack.gateway + "/api/update-user",
            json={"password": f"new-password-{i}"},
            headers=bearer(user["access_token"]),
        ) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    async def introspect() -> tuple[int, float]:
        await started.wait()
        t0 = time.perf_counter()
        async with session.post(
            stack.gateway + "/api/login/oauth/introspect", data={"token": "not-a-token"}, headers=other_auth
        ) as resp:
            await resp.read()
            return resp.status, time.perf_counter() - t0

    changes = [asyncio.create_task(change(i)) for i in range(40)]
    probes = [asyncio.create_task(introspect()) for _ in range(20)]
    change_results = await asyncio.gather(*changes)
    probe_results = await asyncio.gather(*probes)
    statuses = sorted(status for status, _ in change_results)
    print("password changes:", {s: statuses.count(s) for s in set(statuses)})
    print("introspection max seconds:", round(max(t for _, t in probe_results), 3))
    assert all(status in (200, 429) for status in statuses), statuses
    assert 200 in statuses and 429 in statuses, statuses
    assert all(retry for status, retry in change_results if status == 429)
    assert all(status == 200 and seconds < 1.0 for status, seconds in probe_results), probe_results
