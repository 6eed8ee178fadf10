"""Child processes of the local runner: started in their own session (Ctrl-C reaches only the runner, which stops
them in order), told to exit if the runner dies, and stopped with SIGTERM, then SIGKILL after a grace period; and
``is_ready``, the one readiness probe of the runner, the benchmark's stack and the tests' stack."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no orphans after a crash)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)


def child_setup() -> None:
    """``preexec_fn`` of every child: a session of its own, and death with the runner."""
    os.setsid()
    die_with_parent()


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
        self.process = subprocess.Popen(list(args), env=dict(env), stdin=subprocess.DEVNULL, preexec_fn=child_setup)

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
