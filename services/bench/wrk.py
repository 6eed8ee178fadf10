"""The load tool: Debian's ``wrk`` driven by ``wrk/post.lua``, which POSTs one form body per request from a file and
writes its figures as JSON. ``run_wrk`` blocks for the window; run it in a thread to act during it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from services.bench.results import Errors, Latency

SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
#: wrk's threads: one per core of the 2-core machines the figures are read on.
THREADS = 2
#: Longer than the gateway's LOGIN_TIMEOUT (10 s): a slow login is a latency, not a wrk timeout.
_TIMEOUT = "15s"


class _LatencyUs(msgspec.Struct, frozen=True):
    p50: int
    p90: int
    p99: int
    max: int
    mean: float


class WrkReport(msgspec.Struct, frozen=True, rename="camel"):
    """What ``post.lua``'s ``done()`` writes."""

    requests: int
    duration_us: int
    bytes: int
    sent: int
    errors: Errors
    #: Answers that carried ``Load.also`` instead of ``Load.expect`` (counted apart, not as errors).
    also: int
    dry_threads: int
    sent_by_thread: list[int]
    latency_us: _LatencyUs

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6

    @property
    def succeeded(self) -> int:
        """Answers that were what was asked (or ``also``): wrk's requests less the 4xx/5xx and unexpected ones."""
        return self.requests - self.errors.status - self.errors.unexpected

    @property
    def rate(self) -> float:
        """Successful answers per second: a fast refusal (a 503 shed) adds nothing."""
        return self.succeeded / self.seconds if self.duration_us else 0.0

    @property
    def latency_ms(self) -> Latency:
        us = self.latency_us
        return Latency(p50=us.p50 / 1000, p90=us.p90 / 1000, p99=us.p99 / 1000, max=us.max / 1000)


@dataclass(frozen=True, slots=True)
class Load:
    url: str
    #: One form body per line.
    bodies: Path
    connections: int
    #: wrk counts whole seconds.
    seconds: int
    #: What a 2xx answer must contain.
    expect: str
    #: Send each body once (login codes); else cycle through them.
    once: bool = False
    authorization: str = ""
    also: str = ""


@dataclass(frozen=True, slots=True)
class WrkRun:
    report: WrkReport
    #: CPU seconds wrk itself used (its rusage at exit).
    cpu_seconds: float


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


def threads_for(connections: int) -> int:
    return min(THREADS, connections)


def run_wrk(load: Load) -> WrkRun:
    """One wrk run of ``load``; raises if wrk fails or writes no report."""
    threads = threads_for(load.connections)
    with tempfile.TemporaryDirectory(prefix="minidoor-wrk-") as tmp:
        report_path = Path(tmp) / "report.json"
        env = {
            **os.environ,
            "BENCH_THREADS": str(threads),
            "BENCH_BODIES": str(load.bodies),
            "BENCH_ONCE": "1" if load.once else "0",
            "BENCH_AUTH": load.authorization,
            "BENCH_EXPECT": load.expect,
            "BENCH_ALSO": load.also,
            "BENCH_REPORT": str(report_path),
        }
        args = [
            wrk_binary(),
            f"-t{threads}",
            f"-c{load.connections}",
            f"-d{max(1, load.seconds)}s",
            f"--timeout={_TIMEOUT}",
            "-s",
            str(SCRIPT),
            load.url,
        ]
        with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
            assert process.stdout is not None
            output = process.stdout.read()
            # wait4 rather than wait: the rusage is the only record of what wrk's CPU cost once it has exited.
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or not report_path.exists():
            raise RuntimeError(f"wrk failed ({process.returncode}): {output.decode(errors='replace')[-2000:]}")
        report = msgspec.json.decode(report_path.read_bytes(), type=WrkReport)
    return WrkRun(report, usage.ru_utime + usage.ru_stime)


def write_bodies(path: Path, bodies: list[str]) -> Path:
    """The file ``post.lua`` reads: one body a line (form bodies hold no newline)."""
    path.write_text("".join(body + "\n" for body in bodies))
    return path
