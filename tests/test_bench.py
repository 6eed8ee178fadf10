"""``make bench``'s pure parts: wrk's report, the targets, the login pools, and the check ``make bench-smoke`` runs
on a run's files. The run itself, every scenario end to end, is ``make bench-smoke`` (CI runs it after the tests)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from services.bench import plot, profiles, report
from services.bench.check import VERSIONS, check_run
from services.bench.logins import _answered, _mix
from services.bench.results import (
    NOT_SUPPORTED,
    STACK_TYPES,
    Errors,
    Latency,
    Machine,
    Results,
    Revocation,
    Scenario,
    Settings,
    expected_keys,
    write,
)
from services.bench.targets import evaluate, scenario_targets
from services.bench.wrk import WrkReport

_GROUPS = ["peer", "introspection", "verification", "login"]
_CONNECTIONS = [16, 64, 256]


def _scenario(key: str, rate: float = 1000.0, **fields) -> Scenario:
    system, kind = key.split("/")[:2]
    if "/ES256" in key:
        return Scenario(key=key, system=system, kind=kind, label=key, alg="ES256", status=NOT_SUPPORTED)
    alg = next((part for part in key.split("/") if part in ("RS256", "ES256")), "")
    connections = next((int(part[1:]) for part in key.split("/") if part.startswith("c")), 0)
    types = list(STACK_TYPES) if system == "minidoor" else [system]
    apart = {"sandbox": 0.5, "load tool": 0.3} if system == "minidoor" else {"load tool": 0.3}
    if kind == "verification":
        return Scenario(
            key=key, system=system, kind=kind, label=key, alg=alg, rate=rate, baseline="bare", baseline_rate=rate,
            units={"verifier": 2.0}, units_total=2.0,
        )  # fmt: skip
    return Scenario(
        key=key,
        system=system,
        kind=kind,
        label=key,
        alg=alg,
        connections=connections,
        new_users=0.25 if kind == "login" else None,
        rate=rate,
        requests=int(rate),
        seconds=1.0,
        errors=Errors(),
        latency_ms=Latency(p50=1.0, p90=2.0, p99=4.0, max=9.0),
        units=dict.fromkeys(types, 2.0),
        units_total=2.0 * len(types),
        units_apart=apart,
        peak_rss_mib=dict.fromkeys(types, 50.0),
        revocation=Revocation(answered_ms=2.0, inactive_after_ms={"gateway 1": 3.0}, inactive_answers=1)
        if system == "minidoor" and kind == "introspection"
        else None,
        **fields,
    )


_STACKS = "<module> (gateway/__main__.py:1);run (gateway/app.py:9);handle (gateway/views.py:40) 30\n" + (
    "<module> (gateway/__main__.py:1);run (gateway/app.py:9) 10\n"
)


def _run(tmp_path: Path | None = None) -> Results:
    """A whole run of every group, ES256 rows not supported, peer rates half minidoor's; with ``tmp_path``, each
    scenario that misses a target has a gateway profile there, as the bench records one."""
    scenarios = [
        _scenario(key, rate=500.0 if key.startswith("peer") else 1000.0) for key in expected_keys(_GROUPS, _CONNECTIONS)
    ]
    for s in scenarios if tmp_path is not None else []:
        if s.system == "minidoor" and any(t.met is False for t in scenario_targets(s, scenarios)):
            assert tmp_path is not None
            stacks = tmp_path / "run" / (s.key.replace("/", "-") + "-gateway.txt")
            stacks.parent.mkdir(exist_ok=True)
            stacks.write_text(_STACKS)
            s.profiles = [profiles._digest("gateway", 7, 2.0, stacks, tmp_path, 1.0, "")]
    run = Results(
        schema=1,
        started_at="2026-12-01T00:00:00Z",
        finished_at="2026-12-01T00:06:00Z",
        machine=Machine(cpu_model="test cpu", cores=2, memory_gib=24.0, kernel="6.1"),
        versions=dict.fromkeys(VERSIONS, "1"),
        settings=Settings(
            smoke=True,
            duration=1,
            warmup=1,
            threads=2,
            connections=_CONNECTIONS,
            unit_connections=64,
            auth_workers=2,
            introspection_tokens=1000,
            groups=_GROUPS,
        ),  # fmt: skip
        unit_ms=0.05,
        scenarios=scenarios,
    )
    run.targets = evaluate(run)
    return run


def _files(run: Results, tmp_path):
    path = write(run, tmp_path, "run")
    path.with_suffix(".md").write_text(report.markdown(run, "run.png"))
    plot.draw(run, path.with_suffix(".png"))
    return path


class TestWrkReport:
    def test_decodes_post_lua_output(self) -> None:
        """What post.lua's done() writes decodes, with the rate over wrk's own duration and latency in ms."""
        raw = (
            b'{"requests":500,"durationUs":2000000,"bytes":1,"sent":502,"errors":{"connect":0,"read":0,"write":0,'
            b'"status":3,"timeout":0,"unexpected":1,"statuses":{"503":3}},"also":2,"dryThreads":0,'
            b'"sentByThread":[251,251],"latencyUs":{"p50":1500,"p90":3000,"p99":9000,"max":12000,"mean":1800.5}}'
        )
        decoded = msgspec.json.decode(raw, type=WrkReport)
        assert decoded.rate == (500 - 3 - 1) / 2  # refusals and unexpected answers are not a rate
        assert decoded.errors.total == 4 and decoded.errors.statuses == {"503": 3}
        assert decoded.latency_ms == Latency(p50=1.5, p90=3.0, p99=9.0, max=12.0)


class TestTargets:
    def test_verdicts(self) -> None:
        """Each target says met or missed by how much; the ES256 rows say they are not supported yet."""
        targets = {(t.name, t.scenario): t for t in _run().targets}
        login = targets["login >= 1x the peer's RS256 JWT grants/s", "minidoor/login/RS256/c64/new25"]
        assert (login.figure, login.met, login.verdict) == (2.0, True, "met by 100%")
        units = targets["introspection <= 3 units", "minidoor/introspection/c16"]
        assert (units.figure, units.met, units.verdict) == (10.0, False, "missed by 233%")
        es256 = targets["ES256 login <= 15 units", "minidoor/login/ES256/c256/new100"]
        assert (es256.figure, es256.met, es256.verdict) == (None, None, NOT_SUPPORTED)
        memory = targets["user store: every process <= 100 MiB RSS", "minidoor/login/RS256/c256/new100"]
        assert memory.met is True and memory.verdict == "met by 50%"


class TestLoginPools:
    def test_mix(self) -> None:
        """A quarter new users: three in four logins by returning users, each at most RETURNING_USES times."""
        openids, new = _mix(["a", "b"], 40, 0.25)
        assert len(openids) == 40 and sum(new) == 20  # 2 returning users x 10 uses, then only new ones
        assert openids[:8].count("a") + openids[:8].count("b") == 6 and sum(new[:8]) == 2
        assert all(new[27:]) and all(
            not flag for openid, flag in zip(openids, new, strict=True) if openid in ("a", "b")
        )

    def test_answered_leaves_out_what_may_be_in_flight(self) -> None:
        """Thread t sent lines t, t + 2, ...; the last connection's worth per thread may not have been answered."""
        openids = [f"u{i}" for i in range(20)]
        assert _answered(openids, [5, 3], connections=4) == ["u0", "u2", "u4", "u1"]


class TestSmokeCheck:
    def test_whole_run_passes(self, tmp_path) -> None:
        """The files of a complete run, as the bench writes them, pass the check."""
        assert check_run(_files(_run(tmp_path), tmp_path)) == []

    def test_missing_scenario_and_fields(self, tmp_path) -> None:
        """A scenario left out of the matrix and a window without latency are both reported."""
        run = _run()
        dropped = run.scenarios.pop()
        run.scenarios[0] = msgspec.structs.replace(run.scenarios[0], latency_ms=None)
        problems = check_run(_files(run, tmp_path))
        assert any(dropped.key in p and "missing" in p for p in problems)
        assert "unit/unit: requests, seconds, errors or latency missing" in problems

    @pytest.mark.parametrize("damage", ["png", "md"])
    def test_broken_files(self, tmp_path, damage) -> None:
        """A PNG that is not one, or a summary without the targets, fails the check."""
        path = _files(_run(tmp_path), tmp_path)
        path.with_suffix(f".{damage}").write_text("nothing here")
        problems = check_run(path)
        assert problems and all(f"run.{damage}" in p for p in problems)


class TestProfiles:
    def test_digest_and_flame_graph(self, tmp_path) -> None:
        """py-spy's collapsed stacks become the frames with the most self time, in percent, and an SVG beside them."""
        stacks = tmp_path / "r" / "minidoor-login-RS256-c64-new100-gateway.txt"
        stacks.parent.mkdir()
        stacks.write_text(_STACKS)
        profile = profiles._digest("gateway", 7, 3.5, stacks, tmp_path, 2.0, "")
        assert profile.samples == 40 and profile.error == ""
        assert [(f.function, f.self_percent) for f in profile.frames] == [
            ("handle (gateway/views.py:40)", 75.0),
            ("run (gateway/app.py:9)", 25.0),
        ]
        assert profile.svg == "r/minidoor-login-RS256-c64-new100-gateway.svg"
        svg = (tmp_path / profile.svg).read_text()
        assert svg.startswith("<svg") and "handle (gateway/views.py:40): 30 samples, 75.0 %" in svg

    def test_dominant_processes(self) -> None:
        """The busiest Python type always, the others from a fifth of the units; PostgreSQL and Redis never."""
        s = _scenario("minidoor/login/RS256/c64/new100")
        s.units = {"gateway": 4.0, "workers": 5.0, "user store": 0.5, "postgres": 9.0, "redis": 1.0}
        s.units_total = 19.5
        assert profiles.dominant(s) == ["workers", "gateway"]

    def test_miss_line(self, tmp_path) -> None:
        """A miss says by how much, where the time goes and which file holds the profile; the summary repeats it."""
        run = _run(tmp_path)
        (miss,) = [t for t in run.targets if t.name == "introspection <= 3 units" and t.scenario.endswith("/c64")]
        assert miss.explanation == (
            "missed by 3.33x (got 10, target <= 3); time goes to: gateway (2 units): handle (gateway/views.py:40) "
            "75 %, run (gateway/app.py:9) 25 %; workers 2 units (not sampled); user store 2 units (not sampled); "
            "postgres 2 units (not sampled); redis 2 units (not sampled); "
            "profiles: run/minidoor-introspection-c64-gateway.svg"
        )
        assert miss.explanation in report.markdown(run, "run.png")

    def test_a_miss_without_a_profile_fails_the_check(self, tmp_path) -> None:
        """The check names the scenario whose miss no profile explains, and a profile whose flame graph is gone."""
        run = _run(tmp_path)
        intro = run.scenario("minidoor/introspection/c16")
        assert intro is not None
        intro.profiles = []
        gone = run.scenario("minidoor/introspection/c64")
        assert gone is not None
        (tmp_path / gone.profiles[0].svg).unlink()
        run.targets = evaluate(run)
        problems = check_run(_files(run, tmp_path))
        assert "minidoor/introspection/c16: missed 'introspection <= 3 units' and has no profile" in problems
        assert "minidoor/introspection/c64: run/minidoor-introspection-c64-gateway.svg is missing or empty" in problems
