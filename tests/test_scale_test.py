"""The scale test's pure helpers (``make scale-test`` itself is the test of the cluster): its figures line, the
count of hosts that served their share, the openids of a run, the balancer's choice and the host plan."""

from __future__ import annotations

import asyncio

from services.scale_test.balancer import Backend, RoundRobin, check_health, parse_address
from services.scale_test.hosts import HOSTS, plan
from services.scale_test.load import _Answer, classify
from services.scale_test.runs import Figures, hosts_used, login_openids


class TestFigures:
    def test_line_is_exactly_the_documented_one(self):
        """One line per run in the issue's format, hosts counted against their kind's total."""
        figures = Figures(
            logins=5000,
            tokens=4990,
            clear_errors=10,
            lost=0,
            duplicated_users=0,
            double_exchanges=0,
            hung=0,
            used={"gateway": 2, "worker": 3, "user_store": 2},
        )
        assert figures.line("baseline") == (
            "scale-test baseline: logins=5000 tokens=4990 clear_errors=10 lost=0 duplicated_users=0 "
            "double_exchanges=0 hung=0 gateways_used=2/2 workers_used=3/3 user_stores_used=2/2"
        )
        assert figures.ok

    def test_any_loss_or_idle_host_fails(self):
        """A lost login, a duplicated user, a second exchange, a hung answer or a host short of its share fails."""
        used = {"gateway": 2, "worker": 3, "user_store": 2}
        good = {"logins": 10, "tokens": 10, "clear_errors": 0, "lost": 0, "duplicated_users": 0}
        for bad in ({"lost": 1}, {"duplicated_users": 1}, {"double_exchanges": 1}, {"hung": 1}):
            figures = Figures(**{**good, "double_exchanges": 0, "hung": 0, **bad}, used=used)
            assert not figures.ok, bad
        idle = Figures(**good, double_exchanges=0, hung=0, used={**used, "worker": 2})
        assert not idle.ok
        assert "workers_used=2/3" in idle.line("x")


class TestHostsUsed:
    def test_a_tenth_of_an_equal_share_counts(self):
        """Three workers that served 1000 logins: a share is 333, a tenth of it 33.3."""
        assert hosts_used({"w1": 34, "w2": 500, "w3": 466}) == 3
        assert hosts_used({"w1": 33, "w2": 500, "w3": 467}) == 2
        assert hosts_used({"gw1": 0, "gw2": 0}) == 0


class TestLoginOpenids:
    def test_every_fourth_is_a_returning_user(self):
        """A quarter of the logins are the returning users', taken in turn; the others are new and distinct."""
        openids = login_openids("run", 16, ["old-0", "old-1"])
        assert openids[3::4] == ["old-0", "old-1", "old-0", "old-1"]
        new = [o for i, o in enumerate(openids) if i % 4 != 3]
        assert len(set(new)) == 12 and all(o.startswith("run-") for o in new)


class TestClassify:
    def test_outcomes(self):
        """A token, a clear OAuth error (4xx, 503, 504 with a description), or lost (no answer, a bare 500)."""
        assert classify(_Answer(status=200, body={"access_token": "t"})) == "token"
        body = {"error": "temporarily_unavailable", "error_description": "call wx.login() again"}
        assert classify(_Answer(status=503, body=body)) == "clear"
        assert classify(_Answer(status=500, body=body)) == "lost"
        assert classify(_Answer(status=400, body={"error": "invalid_grant"})) == "lost"
        assert classify(_Answer(failure="timeout")) == "lost"


class TestBalancer:
    def test_round_robin_skips_unhealthy_backends(self):
        """Connections alternate over healthy backends; none healthy is None."""
        a, b, c = Backend("10.0.0.1", 1, healthy=True), Backend("10.0.0.2", 1), Backend("10.0.0.3", 1, healthy=True)
        rr = RoundRobin([a, b, c])
        assert [rr.choose() for _ in range(4)] == [a, c, a, c]
        a.healthy = c.healthy = False
        assert rr.choose() is None

    def test_parse_address(self):
        """address:port, anything else refused."""
        assert parse_address("10.213.0.21:8001") == ("10.213.0.21", 8001)
        for bad in ("10.213.0.21", ":80", "host:port"):
            try:
                parse_address(bad)
            except ValueError:
                continue
            raise AssertionError(bad)

    async def test_health_is_a_200_on_readyz(self):
        """A backend answering 200 on /readyz is healthy; 503, or nobody listening, is not."""
        statuses = iter([b"200 OK", b"503 Service Unavailable"])

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readline()
            assert request.startswith(b"GET /readyz ")
            writer.write(b"HTTP/1.1 " + next(statuses) + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            backend = Backend("127.0.0.1", port)
            assert await check_health(backend)
            assert not await check_health(backend)
        assert not await check_health(backend)


class TestPlan:
    def test_every_host_has_its_own_private_address(self):
        """Eleven hosts, distinct addresses in 10.213.0.0/24, names short enough for a Linux link (15)."""
        hosts = plan()
        assert set(hosts) == set(HOSTS) and len(hosts) == 11
        assert len({h.address for h in hosts.values()}) == 11
        assert all(h.address.startswith("10.213.0.") and len(h.link) <= 15 for h in hosts.values())
        assert hosts["w1"].command(["true"]) == ["ip", "netns", "exec", "mdst-w1", "true"]
