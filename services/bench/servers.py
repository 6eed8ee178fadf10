"""Starting and stopping the servers a benchmark measures beside the stack (the unit, the peer): each prints a line
with "listening" once it accepts connections, and is stopped with SIGTERM."""

from __future__ import annotations

import selectors
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

_START_TIMEOUT = 30.0


@contextmanager
def servers(
    commands: Sequence[Sequence[str]], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[list[int]]:
    """Every command started and listening; yields their pids, stops them all at the end."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for args in commands:
            process = subprocess.Popen(
                list(args),
                env=None if env is None else dict(env),
                cwd=cwd,
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            started.append(process)
            _wait_listening(process, " ".join(args))
        yield [process.pid for process in started]
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _wait_listening(process: subprocess.Popen[bytes], name: str) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                line = process.stdout.readline()
                if b"listening" in line:
                    return
                if not line:
                    break
    raise RuntimeError(f"{name} did not start (exit code {process.poll()})")
