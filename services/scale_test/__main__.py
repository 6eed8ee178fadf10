"""``python -m services.scale_test`` (``make scale-test``): build the hosts, start the cluster, warm it up, then one
run per fault (``runs.py``), one line each; exit 1 when a run lost, duplicated, double-exchanged or hung anything,
or a host served less than a tenth of its share. Everything it made is removed on every way out (Ctrl-C and SIGTERM
included), and what an earlier run left is removed first.

``SCALE_TEST_LOGINS`` (5000) and ``SCALE_TEST_INTROSPECTIONS`` (2000) set each run's load; ``SCALE_TEST_WARM_USERS``
(500) the returning users logged in once before the runs; ``SCALE_TEST_LOG_LEVEL`` (warning) the services' log
level; ``SCALE_TEST_RUNS`` (all) a comma-separated choice of runs by name; ``SCALE_TEST_KEEP=1`` keeps the state
directory (logs under ``logs/``) after the run.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import IO

import aiohttp
import msgspec

from services.scale_test.cluster import Cluster, HostChild
from services.scale_test.hosts import Network, cannot_run, cleanup_stale
from services.scale_test.load import LoadSpec
from services.scale_test.runs import RUNS, Figures, Progress, Run, execute, login_openids, run_load
from shared.logs import configure_logging

LOCK_FILE = Path(tempfile.gettempdir()) / "minidoor-scale-test.lock"


def _say(line: str) -> None:
    print(line, flush=True)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _lock() -> IO[bytes] | None:
    """The machine-wide lock of the scale test (held until exit), or None when another run holds it: its hosts have
    the same names, which this run's clean-up of stale ones would remove."""
    handle = LOCK_FILE.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


async def _scenario(
    cluster: Cluster, runs: list[Run], logins: int, introspections: int, warm_users: int
) -> list[Figures]:
    demo = cluster.demo
    assert demo is not None
    base = LoadSpec(
        gateways=cluster.gateway_urls,
        sandbox=cluster.sandbox_url,
        appid=demo.wechat_app_id,
        client_id=demo.client_id,
        client_secret=demo.client_secret,
        openids=[f"warm-{i}" for i in range(warm_users)],
        introspections=0,
        keep_tokens=500,
    )
    started = time.monotonic()
    warm = await run_load(cluster, base, Progress())
    _say(
        f"scale-test: warm-up: {warm.tokens} of {warm.logins} returning users logged in once "
        f"({time.monotonic() - started:.0f} s)"
    )
    returning = [f"warm-{i}" for i in range(warm_users)]
    results = []
    async with aiohttp.ClientSession() as http:
        for run in runs:
            spec = msgspec.structs.replace(
                base,
                openids=login_openids(run.name, logins, returning),
                introspections=introspections,
                tokens=warm.kept_tokens,
                keep_tokens=0,
            )
            started = time.monotonic()
            figures, _result, details = await execute(run, cluster, spec, http)
            _say(figures.line(run.name))
            _say(f"{details} ({time.monotonic() - started:.0f} s)")
            results.append(figures)
    return results


def main() -> int:
    reason = cannot_run()
    if reason:
        _say(f"scale-test: skipped: {reason}")
        return 0
    lock = _lock()
    if lock is None:
        _say(f"scale-test: another scale test holds {LOCK_FILE} on this machine; one at a time (they share names)")
        return 1
    stale = cleanup_stale()
    if stale:
        _say(f"scale-test: removed what an earlier run left: {' '.join(sorted(set(stale)))}")
    signal.signal(signal.SIGTERM, _interrupt)
    configure_logging("warning", service="scale-test")  # the seed's lines (migrations) would drown the figures
    logins = _int_env("SCALE_TEST_LOGINS", 5000)
    introspections = _int_env("SCALE_TEST_INTROSPECTIONS", 2000)
    warm_users = _int_env("SCALE_TEST_WARM_USERS", 500)
    wanted = (os.environ.get("SCALE_TEST_RUNS") or "").split(",")
    runs = [run for run in RUNS if run.name in wanted] if any(wanted) else RUNS
    state = Path(tempfile.mkdtemp(prefix="mdst-"))
    state.chmod(0o711)  # PostgreSQL runs as its own user under it
    network = Network()
    cluster: Cluster | None = None
    started = time.monotonic()
    failed = True
    try:
        network.create()
        cluster = Cluster(network, state, os.environ.get("SCALE_TEST_LOG_LEVEL") or "warning")
        cluster.start_db()
        cluster.start_services()
        _say(
            f"scale-test: 11 hosts up in {time.monotonic() - started:.0f} s; each run: {logins} logins, "
            f"{introspections} introspections over 2 gateways, a quarter of the logins returning users"
        )
        figures = asyncio.run(_scenario(cluster, runs, logins, introspections, warm_users))
        failed = not all(f.ok for f in figures)
        if cluster.dead():
            _say(f"scale-test: processes died: {', '.join(cluster.dead())}")
            failed = True
    except KeyboardInterrupt:
        _say("scale-test: interrupted; removing the hosts")
    except Exception as exc:  # one line and the logs, then the cleanup below
        _say(f"scale-test: failed: {type(exc).__name__}: {exc}")
        if cluster is not None:
            _print_tails([*cluster.infra, *cluster.services])
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster is not None:
            cluster.stop()
        network.destroy()
        if os.environ.get("SCALE_TEST_KEEP") == "1":
            _say(f"scale-test: state and logs kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    _say(f"scale-test: {'FAILED' if failed else 'passed'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


def _print_tails(children: list[HostChild]) -> None:
    for child in children:
        tail = child.log_tail(1500).strip()
        if tail:
            print(f"--- {child.name} ---\n{tail}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
