"""The targets of issue 9 the bench reports on, each evaluated on every scenario it covers: met or missed, and by
how much. They are goals for later work, so a missed target is a figure, not a failure of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from services.bench.results import OK, Results, Scenario, Target, key

LOGIN_VS_PEER = 1.0
ES256_LOGIN_UNITS = 15.0
P99_OVER_P50 = 5.0
INTROSPECTION_VS_PEER = 2.0
INTROSPECTION_UNITS = 3.0
VERIFICATION_VS_PYJWT = 0.9
PROCESS_RSS_MIB = 100.0


def evaluate(results: Results) -> list[Target]:
    return list(_targets(results))


def _targets(results: Results) -> Iterator[Target]:
    by_kind: dict[str, list[Scenario]] = {}
    for s in results.scenarios:
        if s.system == "minidoor":
            by_kind.setdefault(s.kind, []).append(s)
    for login in by_kind.get("login", []):
        peer = results.scenario(key("peer", "grant", alg=login.alg, connections=login.connections))
        yield _at_least(f"login >= {LOGIN_VS_PEER:g}x the peer's {login.alg} JWT grants/s", login, peer, LOGIN_VS_PEER)
        if login.alg == "ES256":
            yield _at_most(f"ES256 login <= {ES256_LOGIN_UNITS:g} units", login, ES256_LOGIN_UNITS, _units)
        yield _at_most("login: 0 errors", login, 0, _errors)
        yield _at_most(f"login p99 <= {P99_OVER_P50:g}x p50", login, P99_OVER_P50, _tail)
    for intro in by_kind.get("introspection", []):
        peer = results.scenario(key("peer", "introspection", connections=intro.connections))
        yield _at_least(f"introspection >= {INTROSPECTION_VS_PEER:g}x the peer's", intro, peer, INTROSPECTION_VS_PEER)
        yield _at_most(f"introspection <= {INTROSPECTION_UNITS:g} units", intro, INTROSPECTION_UNITS, _units)
    for verification in by_kind.get("verification", []):
        yield _verification(verification)
    yield from _memory(results.scenarios)


def _units(s: Scenario) -> float:
    return s.units_total


def _errors(s: Scenario) -> float:
    return float(s.errors.total) if s.errors is not None else 0.0


def _tail(s: Scenario) -> float:
    latency = s.latency_ms
    return latency.p99 / latency.p50 if latency is not None and latency.p50 else 0.0


def _at_least(name: str, s: Scenario, peer: Scenario | None, goal: float) -> Target:
    if s.status != OK:
        return _unmeasured(name, s.key, f">= {goal:g}x", s.status)
    if peer is None or peer.status != OK or not peer.rate:
        return _unmeasured(name, s.key, f">= {goal:g}x", "not measured (no peer figure)")
    ratio = s.rate / peer.rate
    return Target(
        name=name,
        scenario=s.key,
        goal=f">= {goal:g}x",
        figure=round(ratio, 3),
        met=ratio >= goal,
        verdict=_by(ratio, goal, higher_is_better=True),
    )


def _at_most(name: str, s: Scenario, goal: float, figure_of: Callable[[Scenario], float]) -> Target:
    if s.status != OK:
        return _unmeasured(name, s.key, f"<= {goal:g}", s.status)
    figure = figure_of(s)
    return Target(
        name=name,
        scenario=s.key,
        goal=f"<= {goal:g}",
        figure=round(figure, 3),
        met=figure <= goal,
        verdict=_by(figure, goal, higher_is_better=False),
    )


def _verification(s: Scenario) -> Target:
    name = f"local verification ({s.alg}) >= {VERIFICATION_VS_PYJWT:g}x bare PyJWT"
    if s.status != OK or not s.baseline_rate:
        return _unmeasured(name, s.key, f">= {VERIFICATION_VS_PYJWT:g}x", s.status)
    ratio = s.rate / s.baseline_rate
    return Target(
        name=name,
        scenario=s.key,
        goal=f">= {VERIFICATION_VS_PYJWT:g}x",
        figure=round(ratio, 3),
        met=ratio >= VERIFICATION_VS_PYJWT,
        verdict=_by(ratio, VERIFICATION_VS_PYJWT, higher_is_better=True),
    )


def _memory(scenarios: list[Scenario]) -> Iterator[Target]:
    """One target per minidoor process type: its largest process's peak over the whole run."""
    peaks: dict[str, tuple[float, str]] = {}
    for s in scenarios:
        if s.system == "minidoor":
            for name, mib in s.peak_rss_mib.items():
                if mib >= peaks.get(name, (0.0, ""))[0]:
                    peaks[name] = (mib, s.key)
    for name, (mib, where) in peaks.items():
        yield Target(
            name=f"{name}: every process <= {PROCESS_RSS_MIB:g} MiB RSS",
            scenario=where,
            goal=f"<= {PROCESS_RSS_MIB:g} MiB",
            figure=mib,
            met=mib <= PROCESS_RSS_MIB,
            verdict=_by(mib, PROCESS_RSS_MIB, higher_is_better=False),
        )


def _unmeasured(name: str, scenario: str, goal: str, why: str) -> Target:
    return Target(name=name, scenario=scenario, goal=goal, figure=None, met=None, verdict=why)


def _by(figure: float, goal: float, *, higher_is_better: bool) -> str:
    """How far from the goal, as a share of it ("met by 12%", "missed by 30%"); absolute for a goal of 0."""
    met = figure >= goal if higher_is_better else figure <= goal
    gap = abs(figure - goal)
    amount = f"{gap / goal:.0%}" if goal else f"{gap:g}"
    if gap == 0:
        return "met"
    return f"met by {amount}" if met else f"missed by {amount}"
