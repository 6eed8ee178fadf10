"""CPU time (user + system) of the benchmark stack's own processes, by component.

The runner's children are the services and the embedded ``redis-server``. The embedded PostgreSQL is not among them:
pgserver starts it through ``pg_ctl``, which daemonizes the postmaster, so it is found through the ``postmaster.pid``
in its data directory, and its backends as its children. The WeChat sandbox (it stands in for WeChat), the runner
(it only supervises) and the load generator are not counted. Servers given by ``DATABASE_URL`` / ``REDIS_URL`` are
someone else's processes, and are reported as not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from services.bench.stack import BenchStack
from shared.config import RunnerConfig, load_config

GATEWAY, WORKERS, USER_STORE, POSTGRES, REDIS = "gateway", "auth workers", "user store", "postgres", "redis"
#: ``python -m MODULE`` of a runner child -> its component.
_MODULES = {"gateway": GATEWAY, "auth_worker": WORKERS, "user_store": USER_STORE}


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
    def components(self) -> list[str]:
        """What ``seconds()`` reports on, in a fixed order."""
        seen = [GATEWAY, WORKERS, USER_STORE]
        if self.postmaster_pid_file is not None:
            seen.append(POSTGRES)
        if self.embedded_redis:
            seen.append(REDIS)
        return seen

    @property
    def unseen(self) -> list[str]:
        """Components that run outside the stack's process tree (external servers)."""
        return [
            f"{name} ({variable} is external)"
            for name, variable, external in (
                (POSTGRES, "DATABASE_URL", self.postmaster_pid_file is None),
                (REDIS, "REDIS_URL", not self.embedded_redis),
            )
            if external
        ]

    def seconds(self) -> dict[str, float]:
        """CPU seconds each component has used so far; the difference of two calls is what a window cost. Linux
        counts in 10 ms ticks per process, so a window of a second or less gives coarse figures."""
        totals = dict.fromkeys(self.components, 0.0)
        for child in psutil.Process(self.runner_pid).children(recursive=True):
            try:
                name = _component(child)
                if name in totals:
                    totals[name] += _own(child)
            except psutil.NoSuchProcess:
                continue
        if self.postmaster_pid_file is not None:
            totals[POSTGRES] = _postgres(self.postmaster_pid_file)
        return totals


def process_seconds(pid: int) -> float:
    """CPU seconds one process has used so far."""
    return _own(psutil.Process(pid))


def _own(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _component(process: psutil.Process) -> str:
    if process.name() == "redis-server":
        return REDIS
    match process.cmdline():
        case [_, "-m", module, *_] if module in _MODULES:
            return _MODULES[module]
    return ""


def _postgres(pid_file: Path) -> float:
    """The postmaster, its live children, and the children it has reaped (backends of closed connections)."""
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    times = postmaster.cpu_times()
    total = float(times.user + times.system + times.children_user + times.children_system)
    for child in postmaster.children(recursive=True):
        try:
            total += _own(child)
        except psutil.NoSuchProcess:
            continue
    return total
