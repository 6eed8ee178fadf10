"""CPU time (user + system, every thread) and peak memory of the processes a benchmark measures, by process type.

The runner's children are the services, the WeChat sandbox and the embedded ``redis-server``. The embedded
PostgreSQL is not among them: pgserver starts it through ``pg_ctl``, which daemonizes the postmaster, so it is found
through the ``postmaster.pid`` in its data directory, and its backends as its children. The runner itself (it only
supervises) is not counted. Servers given by ``DATABASE_URL`` / ``REDIS_URL`` are someone else's processes, and are
reported as not counted. A process's figures in ``/proc/PID/stat`` sum all of its threads (the peer signs on libuv's
thread pool), and a parent's include the children it has reaped (backends of closed connections).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from services.bench.results import APART_TYPES, STACK_TYPES
from services.bench.stack import BenchStack
from shared.config import RunnerConfig, load_config

GATEWAY, WORKERS, USER_STORE, POSTGRES, REDIS = STACK_TYPES
SANDBOX, LOAD_TOOL = APART_TYPES
#: ``python -m MODULE`` of a runner child -> its type.
_MODULES = {"gateway": GATEWAY, "auth_worker": WORKERS, "user_store": USER_STORE, "services.wechat_sandbox": SANDBOX}


class Meter(Protocol):
    def seconds(self) -> dict[str, float]:
        """CPU seconds each process type has used so far; the difference of two calls is what a window cost.
        Linux counts in 10 ms ticks per process, so a window of a second or less gives coarse figures."""

    def peak_rss(self) -> dict[str, float]:
        """The peak resident memory (MiB) of the largest live process of each type."""


@dataclass(frozen=True, slots=True)
class Processes:
    """A fixed set of processes, by type (the unit's two, the peer's one)."""

    pids: Mapping[str, Sequence[int]]

    def seconds(self) -> dict[str, float]:
        return {name: sum(_own(psutil.Process(pid)) for pid in pids) for name, pids in self.pids.items()}

    def peak_rss(self) -> dict[str, float]:
        return {name: max(_peak_mib(pid) for pid in pids) for name, pids in self.pids.items()}


@dataclass(frozen=True, slots=True)
class StackCpu:
    runner_pid: int
    #: ``postmaster.pid`` of the embedded cluster; None when ``DATABASE_URL`` names another server.
    postmaster_pid_file: Path | None
    embedded_redis: bool

    @classmethod
    def of(cls, stack: BenchStack) -> StackCpu:
        config = load_config(RunnerConfig, stack.env)
        # The runner keeps its embedded cluster in STATE_DIR/postgres (services/runner.py).
        pid_file = None if config.database_url else Path(config.state_dir).resolve() / "postgres" / "postmaster.pid"
        return cls(stack.pid, pid_file, not config.redis_url)

    @property
    def types(self) -> list[str]:
        """What ``seconds()`` reports on, in a fixed order."""
        seen = [GATEWAY, WORKERS, USER_STORE]
        if self.postmaster_pid_file is not None:
            seen.append(POSTGRES)
        if self.embedded_redis:
            seen.append(REDIS)
        return [*seen, SANDBOX]

    @property
    def unseen(self) -> list[str]:
        """Process types that run outside the stack's process tree (external servers)."""
        return [
            f"{name} ({variable} is external)"
            for name, variable, external in (
                (POSTGRES, "DATABASE_URL", self.postmaster_pid_file is None),
                (REDIS, "REDIS_URL", not self.embedded_redis),
            )
            if external
        ]

    def seconds(self) -> dict[str, float]:
        totals = dict.fromkeys(self.types, 0.0)
        for process, name in self._processes():
            if name in totals and name != POSTGRES:
                try:
                    totals[name] += _own(process)
                except psutil.NoSuchProcess:
                    continue
        if self.postmaster_pid_file is not None:
            totals[POSTGRES] = _postgres_seconds(self._postmaster())
        return totals

    def peak_rss(self) -> dict[str, float]:
        peaks = dict.fromkeys(self.types, 0.0)
        for process, name in self._processes():
            if name in peaks:
                try:
                    peaks[name] = max(peaks[name], _peak_mib(process.pid))
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    continue
        return peaks

    def busiest(self, types: list[str]) -> dict[str, int]:
        """The pid of each type's process that has used the most CPU (the one a profile samples)."""
        found: dict[str, tuple[float, int]] = {}
        for process, name in self._processes():
            if name in types:
                try:
                    used = _own(process)
                except psutil.NoSuchProcess:
                    continue
                if used >= found.get(name, (-1.0, 0))[0]:
                    found[name] = (used, process.pid)
        return {name: found[name][1] for name in types if name in found}

    def executables(self) -> dict[str, str]:
        """The embedded PostgreSQL's and Redis's server binaries, for their versions."""
        found: dict[str, str] = {}
        for process, name in self._processes():
            if name in (POSTGRES, REDIS) and name not in found:
                found[name] = process.exe()
        return found

    def _processes(self) -> list[tuple[psutil.Process, str]]:
        found = []
        for child in psutil.Process(self.runner_pid).children(recursive=True):
            try:
                found.append((child, _type(child)))
            except psutil.NoSuchProcess:
                continue
        if self.postmaster_pid_file is not None:
            postmaster = self._postmaster()
            found += [(process, POSTGRES) for process in [postmaster, *postmaster.children(recursive=True)]]
        return found

    def _postmaster(self) -> psutil.Process:
        assert self.postmaster_pid_file is not None
        return psutil.Process(int(self.postmaster_pid_file.read_text().split()[0]))


def _own(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _peak_mib(pid: int) -> float:
    """``VmHWM`` of ``/proc/PID/status``: the most resident memory the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _type(process: psutil.Process) -> str:
    if process.name() == "redis-server":
        return REDIS
    match process.cmdline():
        case [_, "-m", module, *_] if module in _MODULES:
            return _MODULES[module]
    return ""


def _postgres_seconds(postmaster: psutil.Process) -> float:
    """The postmaster, its live children, and the children it has reaped (backends of closed connections)."""
    times = postmaster.cpu_times()
    total = float(times.user + times.system + times.children_user + times.children_system)
    for child in postmaster.children(recursive=True):
        try:
            total += _own(child)
        except psutil.NoSuchProcess:
            continue
    return total
