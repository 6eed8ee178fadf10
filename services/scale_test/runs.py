"""The scale test's runs: the same load each time, with one network fault during it, and the line each prints.

- ``baseline``: no fault;
- ``worker-link-down``: w1's link down for 10 s, then up (its jobs are claimed by w2 and w3 meanwhile);
- ``db-link-slow``: the db host's link (PostgreSQL and Redis) at ``SLOW_RATE`` both ways for 10 s (tc tbf);
- ``gateway-link-cut``: gw2's link cut for 10 s while its clients wait on it (they retry once on gw1, same code);
- ``user-store-link-cut``: us2's link cut until the load ends (the balancer drops it; its callers retry on us1).
  Last: once back, us2 gets only new connections, and the gateways' and workers' keep-alive ones to the balancer
  stay with us1 (as a Service's would), so a run after it would find us2 short of its share.

A fault starts once ``FAULT_AT`` of the logins have finished, so every host has served its share before.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgspec

from services.processes import child_setup
from services.scale_test.cluster import LOGIN_TIMEOUT, ROOT, Cluster
from services.scale_test.hosts import Network
from services.scale_test.load import HUNG_SLACK, LoadResult, LoadSpec, Waited

FAULT_FOR = 10.0
FAULT_AT = 0.2
SLOW_RATE = "512kbit"
#: A host served its part when it served at least this much of an equal share.
MIN_SHARE = 0.1
#: Expected host counts, by kind: what `hosts_used` is compared with.
HOST_COUNTS = {"gateway": 2, "worker": 3, "user_store": 2}


@dataclass(frozen=True)
class Fault:
    what: str
    apply: Callable[[Network], None]
    undo: Callable[[Network], None]
    #: Seconds the fault lasts; None: until the load ends.
    hold: float | None = FAULT_FOR
    #: The gateway (its index) this fault cuts off, if it is one: its clients' unanswered waits are expected.
    cuts_gateway: int | None = None


@dataclass(frozen=True)
class Run:
    name: str
    fault: Fault | None = None


RUNS = [
    Run("baseline"),
    Run("worker-link-down", Fault("w1's link down", lambda n: n.cut("w1"), lambda n: n.restore("w1"))),
    Run(
        "db-link-slow",
        Fault(f"db's link at {SLOW_RATE}", lambda n: n.slow("db", SLOW_RATE), lambda n: n.unslow("db")),
    ),
    Run(
        "gateway-link-cut",
        Fault("gw2's link down", lambda n: n.cut("gw2"), lambda n: n.restore("gw2"), cuts_gateway=1),
    ),
    Run(
        "user-store-link-cut",
        Fault("us2's link cut", lambda n: n.cut("us2"), lambda n: n.restore("us2"), hold=None),
    ),
]


@dataclass
class Figures:
    logins: int
    tokens: int
    clear_errors: int
    lost: int
    duplicated_users: int
    double_exchanges: int
    hung: int
    used: dict[str, int] = field(default_factory=dict)

    def line(self, run: str) -> str:
        used = " ".join(f"{kind}s_used={self.used.get(kind, 0)}/{n}" for kind, n in HOST_COUNTS.items())
        return (
            f"scale-test {run}: logins={self.logins} tokens={self.tokens} clear_errors={self.clear_errors} "
            f"lost={self.lost} duplicated_users={self.duplicated_users} double_exchanges={self.double_exchanges} "
            f"hung={self.hung} {used}"
        )

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated_users == self.double_exchanges == self.hung == 0 and all(
            self.used.get(kind, 0) == n for kind, n in HOST_COUNTS.items()
        )


def hosts_used(served: dict[str, float]) -> int:
    """How many hosts served at least ``MIN_SHARE`` of an equal share of what all of them served."""
    total = sum(served.values())
    if total <= 0:
        return 0
    share = total / len(served)
    return sum(value >= MIN_SHARE * share for value in served.values())


def login_openids(run: str, logins: int, returning: list[str]) -> list[str]:
    """One openid per login: every fourth a returning user's (from ``returning``, in turn), the rest new ones."""
    openids = []
    for i in range(logins):
        if returning and i % 4 == 3:
            openids.append(returning[(i // 4) % len(returning)])
        else:
            openids.append(f"{run}-{i}")
    return openids


def hung(waited: list[Waited], cut_gateway: int | None, window: tuple[float, float] | None) -> int:
    """Attempts a gateway left unanswered past the client's deadline, except those on a gateway whose link was cut
    while they waited (those clients retried on the other gateway)."""
    if cut_gateway is None or window is None:
        return len(waited)
    cut_from, cut_to = window
    return sum(not (w.gateway == cut_gateway and w.began < cut_to and w.ended > cut_from) for w in waited)


def deltas(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {kind: {host: after[kind][host] - before[kind].get(host, 0.0) for host in after[kind]} for kind in after}


class Progress:
    def __init__(self) -> None:
        self.finished = 0
        self._changed = asyncio.Event()

    def update(self, finished: int) -> None:
        self.finished = finished
        self._changed.set()

    async def reached(self, count: int) -> None:
        while self.finished < count:
            self._changed.clear()
            await self._changed.wait()


async def run_load(cluster: Cluster, spec: LoadSpec, progress: Progress) -> LoadResult:
    """``load.py`` on the load host, fed ``spec``; its progress lines update ``progress``."""
    log = (cluster.logs / "load.log").open("ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            *cluster.h["load"].command([sys.executable, "-m", "services.scale_test.load"]),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            preexec_fn=child_setup,
            limit=64 * 1024 * 1024,
        )
    finally:
        log.close()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(msgspec.json.encode(spec))
    await proc.stdin.drain()
    proc.stdin.close()
    result: LoadResult | None = None
    try:
        async for raw in proc.stdout:
            line = raw.decode()
            if line.startswith("progress "):
                progress.update(int(line.split()[1]))
            elif line.startswith("result "):
                result = msgspec.json.decode(line.removeprefix("result "), type=LoadResult)
    except BaseException:  # interrupted: the load goes too, before its pipes outlive the loop
        proc.kill()
        await proc.wait()
        raise
    code = await proc.wait()
    if result is None:
        raise RuntimeError(f"the load exited with {code} and no result (see {cluster.logs / 'load.log'})")
    return result


async def _inject(
    fault: Fault, cluster: Cluster, progress: Progress, start_at: int, load_done: asyncio.Event, window: list[float]
) -> str:
    await progress.reached(start_at)
    window.append(time.time())
    fault.apply(cluster.net)
    at = progress.finished
    try:
        if fault.hold is None:
            await load_done.wait()
        else:
            await asyncio.sleep(fault.hold)  # the fault itself lasts this long; nothing to wait for
    finally:
        fault.undo(cluster.net)
        window.append(time.time())
    return f"{fault.what} for {window[1] - window[0]:.1f} s from login {at}"


async def execute(
    run: Run, cluster: Cluster, spec: LoadSpec, http: aiohttp.ClientSession
) -> tuple[Figures, LoadResult, str]:
    """One run: the load, its fault, then (everything back and ready) what each host served and the checks."""
    before = await cluster.served(http)
    stats_before = await cluster.sandbox_stats(http)
    progress = Progress()
    load_done = asyncio.Event()
    injected: asyncio.Task[str] | None = None
    window: list[float] = []
    if run.fault is not None:
        start_at = max(100, int(len(spec.openids) * FAULT_AT) // 100 * 100)
        injected = asyncio.create_task(_inject(run.fault, cluster, progress, start_at, load_done, window))
    try:
        result = await run_load(cluster, spec, progress)
    finally:
        load_done.set()
        if injected is not None and not window:
            injected.cancel()  # the load ended before the fault began
    what = await injected if injected is not None and window else "no fault"
    await asyncio.to_thread(cluster.wait_ready, 60.0)
    served = deltas(before, await cluster.served(http))
    stats_after = await cluster.sandbox_stats(http)
    double = stats_after["codes_presented_more_than_once"] - stats_before["codes_presented_more_than_once"]
    if injected is not None and not window:
        raise RuntimeError(f"{run.name}: the load ended before its fault began; give it more logins")
    figures = Figures(
        logins=result.logins,
        tokens=result.tokens,
        clear_errors=sum(result.clear_errors.values()),
        lost=result.lost + result.introspections_lost,
        duplicated_users=await cluster.duplicated_users() + result.split_users,
        double_exchanges=double,
        hung=hung(
            result.waited, run.fault.cuts_gateway if run.fault else None, (window[0], window[1]) if window else None
        ),
        used={kind: hosts_used(hosts) for kind, hosts in served.items()},
    )
    shares = "; ".join(
        f"{kind}: " + " ".join(f"{h}={v:.0f}" for h, v in hosts.items()) for kind, hosts in served.items()
    )
    details = (
        f"  {run.name}: {what}; errors {result.clear_errors or 'none'}; retried on the other gateway "
        f"{result.retried} (tokens {result.retried_tokens}, clear errors {result.retried_errors}; "
        f"{len(result.waited)} after waiting {HUNG_SLACK + LOGIN_TIMEOUT:.0f} s); introspections "
        f"{result.introspections} (active {result.introspections_active}, errors "
        f"{result.introspection_errors or 'none'}, lost {result.introspections_lost}); served: {shares}"
    )
    if result.lost_samples:
        details += f"\n  {run.name}: lost, e.g. {result.lost_samples}"
    return figures, result, details
