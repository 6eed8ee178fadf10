"""Measuring: a wrk window with the CPU and peak memory of the measured processes around it, turned into a
``Scenario`` in units; and rates of coroutines taking turns on one core (local verification). Plus what every
benchmark group receives: the ``BenchContext``."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.bench import profiles
from services.bench.cpu import LOAD_TOOL, Meter
from services.bench.results import APART_TYPES, CONNECTIONS, Scenario
from services.bench.stack import BenchStack
from services.bench.targets import scenario_targets
from services.bench.wrk import Load, WrkReport, run_wrk

AUTH_WORKERS = 2
#: Below this many cores, the measured processes are idle (the stack's own timers use a few percent of one).
_IDLE_CORES = 0.15
_SETTLE_INTERVAL = 0.5
_SETTLE_LIMIT = 20.0
#: Turns the steps compared by ``cpu_rates`` take, each a slice of the window.
_SLICES = 8


@dataclass
class BenchContext:
    """What benchmark groups share: the windows, the connection counts, the unit (set by the first group), a scratch
    directory, and one stack started on first use and stopped at the end."""

    duration: int = 8
    warmup: int = 2
    connections: tuple[int, ...] = CONNECTIONS
    #: Live tokens the introspection windows cycle through.
    tokens: int = 1000
    #: CPU milliseconds of one request to the unit; 0 until the unit is measured.
    unit_ms: float = 0.0
    #: Seconds of the second window that profiles a scenario that missed a target; 0: no profiles.
    profile_seconds: int = 2
    #: Where the results go, and the run's own directory under it, where profiles land.
    results_dir: Path = Path("bench/results")
    profile_dir: Path = Path("bench/results/profiles")
    #: Profile only the first miss of each kind (``--smoke``: fast).
    smoke: bool = False
    #: Every scenario measured so far, that the targets of the next one are judged against (the peer's).
    measured: list[Scenario] = field(default_factory=list)
    _profiled_kinds: set[str] = field(default_factory=set, repr=False)
    _stack: BenchStack | None = field(default=None, repr=False)
    _scratch: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="minidoor-bench-files-"), repr=False
    )

    @property
    def scratch(self) -> Path:
        return Path(self._scratch.name)

    @property
    def unit_connections(self) -> int:
        """The connection count the unit is measured at: the middle one (64 by default)."""
        return sorted(self.connections)[len(self.connections) // 2]

    async def stack(self) -> BenchStack:
        if self._stack is None:
            self._stack = await asyncio.to_thread(BenchStack(AUTH_WORKERS=str(AUTH_WORKERS)).start)
        return self._stack

    async def explain(
        self, s: Scenario, pids: Callable[[list[str]], dict[str, int]], window: Callable[[], Awaitable[object]]
    ) -> Scenario:
        """If ``s`` missed a target, profile the processes that dominate it (``pids`` finds the busiest of each type)
        while ``window`` runs the same load again."""
        if not any(t.met is False for t in scenario_targets(s, self.measured)) or not self.profile_seconds:
            return s
        if self.smoke and s.kind in self._profiled_kinds:
            s.unprofiled = "a smoke run profiles only the first miss of each kind"
            return s
        self._profiled_kinds.add(s.kind)
        s.profiles = await profiles.record(s, pids(profiles.dominant(s)), self.profile_dir, self.results_dir, window)
        return s

    def close(self) -> None:
        if self._stack is not None:
            self._stack.stop()
        self._scratch.cleanup()


@dataclass(frozen=True, slots=True)
class Window:
    report: WrkReport
    #: CPU seconds used in the window, by process type, the load tool's included.
    cpu: dict[str, float]
    peak_rss_mib: dict[str, float]


async def measure(
    load: Load, meter: Meter, *, warmup: int = 0, during: Callable[[], Coroutine[Any, Any, None]] | None = None
) -> Window:
    """One wrk window of ``load``, after ``warmup`` seconds of the same load, opened once the measured processes are
    idle; ``during`` runs alongside the window (e.g. a revocation mid-window)."""
    if warmup:
        await warm_up(replace(load, seconds=warmup), meter)
    await settle(meter)
    before = meter.seconds()
    if during is None:
        run = await asyncio.to_thread(run_wrk, load)
    else:
        run, _ = await asyncio.gather(asyncio.to_thread(run_wrk, load), during())
    after = meter.seconds()
    cpu = {name: after[name] - before[name] for name in after}
    cpu[LOAD_TOOL] = run.cpu_seconds
    return Window(run.report, cpu, meter.peak_rss())


async def warm_up(load: Load, meter: Meter) -> WrkReport:
    """An unmeasured wrk run, once the processes are idle: connections, pools and caches warmed before the window."""
    await settle(meter)
    return (await asyncio.to_thread(run_wrk, load)).report


async def settle(meter: Meter) -> None:
    """Wait (up to ``_SETTLE_LIMIT``) until the measured processes use under ``_IDLE_CORES`` together: requests a
    stopped wrk left in flight (logins queued in the stream) are finished before the next run, not inside it."""
    deadline = time.monotonic() + _SETTLE_LIMIT
    used = sum(meter.seconds().values())
    while time.monotonic() < deadline:
        await asyncio.sleep(_SETTLE_INTERVAL)
        now = sum(meter.seconds().values())
        if now - used < _IDLE_CORES * _SETTLE_INTERVAL:
            return
        used = now


def scenario(window: Window, unit_ms: float, **fields: Any) -> Scenario:
    """The window's figures as a ``Scenario``: rates, latency, errors, and CPU per successful request in ms and
    units (what the errors cost is spread over the answers that counted)."""
    report = window.report
    succeeded = max(report.succeeded, 1)
    cpu_ms = {name: round(1000 * seconds / succeeded, 4) for name, seconds in window.cpu.items()}
    units = {name: round(ms / unit_ms, 2) if unit_ms else 0.0 for name, ms in cpu_ms.items()}
    own = {name: amount for name, amount in units.items() if name not in APART_TYPES}
    return Scenario(
        rate=round(report.rate, 1),
        requests=report.requests,
        seconds=round(report.seconds, 2),
        errors=report.errors,
        latency_ms=report.latency_ms,
        cpu_ms=cpu_ms,
        units=own,
        units_total=round(sum(own.values()), 2),
        units_apart={name: amount for name, amount in units.items() if name in APART_TYPES},
        peak_rss_mib={name: round(mib, 1) for name, mib in window.peak_rss_mib.items() if name not in APART_TYPES},
        ran_dry=report.dry_threads > 0,
        **fields,
    )


async def cpu_rates(steps: Sequence[Callable[[], Awaitable[object]]], seconds: float, warmup: float) -> list[float]:
    """Calls of each of ``steps`` per CPU-second of one coroutine, so on one core. Each is warmed for ``warmup``
    seconds; then they take turns, ``_SLICES`` each, until each has had ``seconds``. Only this thread's CPU time
    counts, so a core lent to other processes is charged to neither, and the turns make a frequency change or a
    collection weigh on every step alike rather than on whichever ran at the time."""
    for step in steps:
        await _calls(step, warmup)
    done = [0] * len(steps)
    spent = [0.0] * len(steps)
    for _ in range(_SLICES):
        for i, step in enumerate(steps):
            calls, cpu = await _calls(step, seconds / _SLICES)
            done[i] += calls
            spent[i] += cpu
    return [calls / cpu for calls, cpu in zip(done, spent, strict=True)]


async def _calls(step: Callable[[], Awaitable[object]], seconds: float) -> tuple[int, float]:
    """Call ``step`` in batches for at least ``seconds`` of this thread's CPU time: how many calls, in how long."""
    done, started = 0, time.thread_time()
    while True:
        for _ in range(64):
            await step()
        done += 64
        if (spent := time.thread_time() - started) >= seconds:
            return done, spent
