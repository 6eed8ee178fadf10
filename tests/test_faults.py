"""Fault tests: a few hundred logins while a worker is SIGKILLed, Redis restarts, PostgreSQL stops and starts, and
every process is restarted one at a time. Each test prints its figures and asserts that every request got a token
or a clear error, that no user was duplicated, that no code was presented to WeChat twice (the sandbox counts), and
that no request hung past its deadline.

One cluster of separate processes (``tests/cluster.py``) serves the whole module; ``make chaos`` runs just this file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from shared.redis_keys import RedisKeys
from tests.cluster import Cluster, Proc
from tests.load import Figures, Load

# A cluster start plus one scenario; the scenarios themselves take 5 to 30 seconds.
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", name="cluster")
def _cluster(open_tmp: Callable[[str], Path]) -> Iterator[Cluster]:
    cluster = Cluster(open_tmp("chaos"), workers=3, gateways=2)
    try:
        yield cluster.start()
    finally:
        cluster.shutdown()


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per request, as many clients behind a load balancer: a restart never strands a keep-alive.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as http:
        yield http


def report(capsys: pytest.CaptureFixture[str], scenario: str, figures: Figures) -> None:
    with capsys.disabled():
        # The cluster raised the per-IP rate limits: the whole load comes from 127.0.0.1.
        print("\n" + figures.line(scenario) + " (per-IP rate limits raised)", flush=True)


def assert_nothing_lost(load: Load, figures: Figures) -> None:
    assert figures.lost == 0, [(r.status, r.body, r.failure) for r in load.lost()[:5]]
    assert figures.tokens + figures.errors == figures.requests
    assert figures.duplicated == 0
    assert figures.double_exchanges == 0
    assert figures.hung == 0


async def metric(http: aiohttp.ClientSession, url: str, name: str, token: str) -> float:
    async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


async def recovered(cluster: Cluster, http: aiohttp.ClientSession, prefix: str, logins: int = 30) -> Figures:
    """A fresh batch of logins once every process says it is ready again."""
    await asyncio.gather(*(proc.ready(timeout=20) for proc in cluster.processes))
    after = Load(cluster, http, prefix=prefix, users=logins)
    await after.run(minimum=logins, concurrency=10)
    return await after.figures()


async def log_lines(procs: list[Proc], request_id: str, event: str) -> list[dict[str, object]]:
    """The lines of ``event`` for ``request_id`` in the logs of ``procs`` (waiting a moment for them to appear)."""
    for _ in range(100):
        lines = [
            line
            for proc in procs
            for line in proc.log_lines()
            if line.get("request_id") == request_id and line.get("event") == event
        ]
        if lines:
            return lines
        await asyncio.sleep(0.05)
    return []


class TestFaults:
    async def test_request_id_reaches_every_process(self, cluster, http):
        """One login: one canonical JSON line in the gateway and one in a worker, and the user store's lines, all
        carrying the request id the client sent."""
        load = Load(cluster, http, prefix="trace", users=1)
        await load.run(minimum=1, concurrency=1)
        [result] = load.results
        assert result.token, result
        gateway_lines = await log_lines(cluster.gateways, result.request_id, "request")
        job_lines = await log_lines(cluster.workers, result.request_id, "job")
        store_lines = await log_lines([cluster.user_store], result.request_id, "request")
        assert len(gateway_lines) == 1 and gateway_lines[0]["status"] == 200
        assert len(job_lines) == 1 and job_lines[0]["outcome"] == "token"
        assert any(line.get("route") == "/internal/logins/wechat-miniprogram" for line in store_lines)

    async def test_sigkill_a_worker(self, cluster, http, capsys):
        """A worker killed mid-job: its jobs are claimed by the others and answered before their deadline."""
        load = Load(cluster, http, prefix="kill", users=300)  # WeChat allows one user 100 logins a minute
        victim = cluster.workers[0]
        keys = RedisKeys(cluster.prefix)
        held_at_kill = 0
        done = asyncio.Event()

        async def chaos() -> None:
            nonlocal held_at_kill
            await load.reached(60)
            async with aioredis.Redis.from_url(cluster.redis_url) as redis:
                for _ in range(10):  # until it dies holding jobs: one it was about to finish may be done by then
                    for _ in range(200):
                        async with http.get(f"{cluster.worker_url(0)}/healthz") as resp:
                            if (await resp.json())["in_flight"] > 0:
                                break
                    await victim.kill()
                    # What a dead consumer still holds stays pending under its name until another claims it.
                    pending = await redis.xpending(keys.job_stream, keys.worker_group)
                    held_at_kill = sum(c["pending"] for c in pending["consumers"] if c["name"] == victim.name.encode())
                    await asyncio.sleep(1.0)  # the worker stays dead a moment: the fault, not a wait for an event
                    victim.start()
                    await victim.ready()
                    if held_at_kill:
                        break
            done.set()

        await asyncio.gather(load.run(minimum=300, concurrency=40, until=done), chaos())
        figures = await load.figures()
        report(capsys, "SIGKILL a worker", figures)
        assert_nothing_lost(load, figures)
        assert "504 temporarily_unavailable" not in figures.clear_errors
        # The killed worker's jobs were taken over (by the others, or by itself once restarted under its name).
        reclaimed = [
            await metric(http, cluster.worker_url(i), "minidoor_worker_reclaimed_jobs_total", cluster.internal_token)
            for i in (0, 1, 2)
        ]
        assert held_at_kill > 0 and sum(reclaimed) > 0, (held_at_kill, reclaimed)

    async def test_restart_redis(self, cluster, http, capsys):
        """Redis restarts under load: 503 + Retry-After at once while it is away, then everything recovers."""
        load = Load(cluster, http, prefix="redis", users=150)
        back = asyncio.Event()

        async def chaos() -> None:
            await load.reached(80)
            await cluster.restart_redis(down_for=1.0)
            back.set()

        # Logins go on until Redis is back, however long its stop and start take: the load always meets the outage.
        await asyncio.gather(load.run(minimum=300, concurrency=30, until=back), chaos())
        figures = await load.figures()
        report(capsys, "restart Redis", figures)
        assert_nothing_lost(load, figures)
        refused = [r for r in load.results if "queue is unreachable" in str(r.body.get("error_description"))]
        assert refused, figures.clear_errors  # logins did meet the outage
        assert all(r.status == 503 and r.retry_after == "1" and r.seconds < 3.0 for r in refused)
        after = await recovered(cluster, http, "redis-after")
        assert after.tokens == after.requests

    async def test_stop_and_start_postgres(self, cluster, http, capsys):
        """PostgreSQL away for two seconds: the user store answers 503, workers retry, no half-written user."""
        load = Load(cluster, http, prefix="pg", users=150)
        readyz_while_down: list[int] = []
        finished_while_down: list[int] = []

        async def chaos() -> None:
            await load.reached(80)
            await cluster.stop_postgres()
            async with http.get(f"{cluster.user_store_url}/readyz") as resp:
                readyz_while_down.append(resp.status)
            await asyncio.sleep(2.0)  # the outage itself, not a wait for something to happen
            finished_while_down.append(load.finished)
            await cluster.start_postgres()

        await asyncio.gather(load.run(minimum=300, concurrency=30), chaos())
        figures = await load.figures()
        report(capsys, "stop and start PostgreSQL", figures)
        assert_nothing_lost(load, figures)
        assert readyz_while_down == [503]
        assert finished_while_down[0] < figures.requests  # logins were still coming when PostgreSQL came back
        after = await recovered(cluster, http, "pg-after")
        assert after.tokens == after.requests

    async def test_rolling_restart(self, cluster, http, capsys):
        """SIGTERM and restart the user store, every worker and every gateway, one at a time, under load: each exits
        0 and every login gets its token."""
        load = Load(cluster, http, prefix="roll", users=150)
        done = asyncio.Event()
        exit_codes: dict[str, int] = {}
        failed_stops: dict[str, str] = {}

        async def chaos() -> None:
            await load.reached(50)
            # The user store first, while the gateways' client_id caches are fresh (a miss would need it up).
            for proc in [cluster.user_store, *cluster.workers, *cluster.gateways]:
                exit_codes[proc.name] = await proc.stop()
                if exit_codes[proc.name] != 0:
                    failed_stops[proc.name] = proc.log_tail(8000)
                proc.start()
                await proc.ready()
            done.set()

        await asyncio.gather(load.run(minimum=300, concurrency=30, until=done), chaos())
        figures = await load.figures()
        report(capsys, "rolling restart", figures)
        assert set(exit_codes.values()) == {0}, (exit_codes, failed_stops)
        assert_nothing_lost(load, figures)
        assert figures.tokens == figures.requests, figures.clear_errors
