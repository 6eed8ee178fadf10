"""Child processes of the local runner: started in their own session (Ctrl-C reaches only the runner, which stops
them in order), told to exit if the runner dies, restarted with backoff when they die (``Supervisor``), and stopped
with SIGTERM, then SIGKILL after a grace period; and ``is_ready``, the one readiness probe of the runner, the
benchmark's stack and the tests' stack."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import structlog

log = structlog.get_logger()

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no orphans after a crash)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def child_setup() -> None:
    """``preexec_fn`` of every child: a session of its own, death with the runner, and the stop signals unblocked
    (a restart forks while the runner holds them: ``signals_held``)."""
    os.setsid()
    die_with_parent()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done: a stop requested while a child is being started finds it
    recorded, and stops it in its turn, instead of interrupting the start between the fork and the record."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def is_ready(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` (a ``/readyz``) answers 200 within ``timeout`` seconds; a refused connection, a timeout or
    another status (urllib raises it as ``HTTPError``, an ``OSError``) is "not yet"."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class Child:
    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], ready_url: str = "") -> None:
        self.name = name
        self.ready_url = ready_url
        self._args = list(args)
        self._env = dict(env)
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._args, env=self._env, stdin=subprocess.DEVNULL, preexec_fn=child_setup)

    def restart(self) -> None:
        """Start the process again, with the same command and environment (after it exited)."""
        with signals_held():
            self.process = self._spawn()

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def wait_ready(self, timeout: float) -> None:
        """Poll ``ready_url`` until it answers 200; raise if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if (code := self.process.poll()) is not None:
                raise RuntimeError(f"{self.name} exited with code {code} while starting")
            if is_ready(self.ready_url):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready at {self.ready_url} within {timeout:.0f}s")
            time.sleep(0.1)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def stop_in_order(groups: Sequence[Sequence[Child]], grace: float) -> dict[str, int]:
    """SIGTERM each group (all of a group at once), wait for it, then the next; returns exit codes by name."""
    codes: dict[str, int] = {}
    for group in groups:
        for child in group:
            child.terminate()
        for child in group:
            codes[child.name] = child.wait(grace)
    return codes


#: The first restart's delay, doubled for each further death inside the window, up to ``MAX_BACKOFF``.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0


class _Watched:
    def __init__(self, child: Child) -> None:
        self.child = child
        self.deaths: deque[float] = deque()
        self.restart_at: float | None = None
        #: When the last restart happened, while its readiness has not been seen yet.
        self.restarted_at: float | None = None


def exit_reason(code: int) -> str:
    """``Popen.returncode`` in words: ``exit code 1``, or ``killed by SIGKILL`` for a negative one."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class GaveUp(Exception):
    """A child died ``limit`` times within the window: the stack stops. ``reason`` is the line that says so."""

    def __init__(self, process: str, reason: str) -> None:
        super().__init__(reason)
        self.process = process
        self.reason = reason


class Supervisor:
    """Restarts each child that dies, after ``FIRST_BACKOFF`` doubled for each earlier death within ``window``
    seconds, while the others keep serving; a child that dies ``limit`` times within ``window`` raises ``GaveUp``.
    Driven by ``check``, called every few tenths of a second by one thread (the runner's)."""

    def __init__(self, children: Sequence[Child], *, limit: int, window: float) -> None:
        self._watched = [_Watched(child) for child in children]
        self.limit = limit
        self.window = window

    def check(self, now: float) -> None:
        for watched in self._watched:
            child = watched.child
            if watched.restart_at is not None:
                if now >= watched.restart_at:
                    watched.restart_at = None
                    watched.restarted_at = now
                    child.restart()
                    log.info("process_restarted", process=child.name, pid=child.pid)
                continue
            if (code := child.exited()) is not None:
                self._died(watched, code, now)
            elif watched.restarted_at is not None and (not child.ready_url or is_ready(child.ready_url, 0.2)):
                log.info("process_back", process=child.name, seconds=round(now - watched.restarted_at, 2))
                watched.restarted_at = None

    def _died(self, watched: _Watched, code: int, now: float) -> None:
        watched.restarted_at = None
        watched.deaths.append(now)
        while watched.deaths[0] < now - self.window:
            watched.deaths.popleft()
        deaths = len(watched.deaths)
        name = watched.child.name
        if deaths >= self.limit:
            raise GaveUp(
                name,
                f"{name} died {deaths} times in {self.window:g} s (last: {exit_reason(code)}): stopping every process",
            )
        delay = min(FIRST_BACKOFF * 2 ** (deaths - 1), MAX_BACKOFF)
        log.warning(
            "process_died", process=name, reason=exit_reason(code), restart_in=delay, deaths=deaths, window=self.window
        )
        watched.restart_at = now + delay
