"""``python -m services.bench [GROUP ...]``: minidoor and the peer side by side under wrk, in one run; writes
``bench/results/<time>.json``, ``.md`` and ``.png`` and prints the table. ``--smoke`` runs every scenario for about
two seconds and then checks the files and their fields (not the speeds): ``make bench-smoke``, which CI runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from services.bench import plot, report, results
from services.bench.check import check_run
from services.bench.cpu import StackCpu
from services.bench.harness import AUTH_WORKERS, BenchContext
from services.bench.logins import login_apps, login_scenarios
from services.bench.machine import machine, versions
from services.bench.peer import peer_scenarios
from services.bench.targets import evaluate
from services.bench.tokens import introspection_scenarios, verification_scenarios
from services.bench.unit import unit_scenario
from services.bench.wrk import THREADS
from shared.logs import configure_logging
from shared.runtime import new_event_loop

#: In the order they run: the peer before the stack starts; logins last, since their thousands of new users and
#: tokens would otherwise sit in the tables the others read.
GROUPS = ("peer", "introspection", "verification", "login")
SMOKE_SECONDS, SMOKE_WARMUP = 1, 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench", description=__doc__)
    parser.add_argument("groups", nargs="*", metavar="GROUP", help="any of: " + ", ".join(GROUPS) + " (default all)")
    parser.add_argument("--duration", type=int, default=8, help="seconds measured per scenario (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each window (default 2)")
    parser.add_argument(
        "--connections",
        default=",".join(map(str, results.CONNECTIONS)),
        help="wrk connection counts (default %(default)s)",
    )
    parser.add_argument("--tokens", type=int, default=1000, help="live tokens the introspection windows cycle through")
    parser.add_argument("--smoke", action="store_true", help="every scenario for ~2 s, then check the files and fields")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="where the files go (default %(default)s)"
    )
    parser.add_argument(
        "--profile-seconds",
        type=int,
        default=2,
        help="a scenario that missed a target is profiled with py-spy for this long after its window (0: never)",
    )
    args = parser.parse_args(argv)
    if unknown := [name for name in args.groups if name not in GROUPS]:
        parser.error(f"unknown group(s): {', '.join(unknown)}")
    groups = [name for name in GROUPS if name in (args.groups or GROUPS)]
    configure_logging("warning", "auto", service="bench")
    ctx = BenchContext(
        duration=SMOKE_SECONDS if args.smoke else args.duration,
        warmup=SMOKE_WARMUP if args.smoke else args.warmup,
        connections=tuple(int(c) for c in args.connections.split(",")),
        tokens=args.tokens,
        profile_seconds=min(args.profile_seconds, SMOKE_SECONDS) if args.smoke else args.profile_seconds,
        smoke=args.smoke,
    )
    started = datetime.now(UTC)
    stem = started.strftime("%Y%m%dT%H%M%SZ")
    ctx.results_dir, ctx.profile_dir = args.out, args.out / stem
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            run = runner.run(_run(ctx, groups, started, smoke=args.smoke))
    finally:
        ctx.close()
    json_path = results.write(run, args.out, stem)
    json_path.with_suffix(".md").write_text(report.markdown(run, json_path.with_suffix(".png").name))
    plot.draw(run, json_path.with_suffix(".png"))
    print(report.console(run))
    print(f"\nwritten: {json_path}, {json_path.with_suffix('.md')}, {json_path.with_suffix('.png')}")
    if args.smoke:
        if problems := check_run(json_path):
            print("smoke check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print(f"smoke check: {len(run.scenarios)} scenarios and {len(run.targets)} targets, files whole")
    return 0


async def _run(ctx: BenchContext, groups: list[str], started: datetime, *, smoke: bool) -> results.Results:
    scenarios = ctx.measured
    scenarios.append(await unit_scenario(ctx))
    if "peer" in groups:
        scenarios += await peer_scenarios(ctx)
    stack_cpu = None
    if any(group != "peer" for group in groups):
        stack = await ctx.stack()
        stack_cpu = StackCpu.of(stack)
        apps = await login_apps(stack)
        rs256 = apps["RS256"]
        assert rs256 is not None, "the product always signs RS256"
        if "introspection" in groups:
            scenarios += await introspection_scenarios(ctx, rs256)
        if "verification" in groups:
            scenarios += await verification_scenarios(ctx, apps)
        if "login" in groups:
            scenarios += await login_scenarios(ctx, apps)
    run = results.Results(
        schema=results.SCHEMA,
        started_at=_iso(started),
        finished_at=_iso(datetime.now(UTC)),
        machine=machine(),
        versions=await asyncio.to_thread(versions, stack_cpu),
        settings=results.Settings(
            smoke=smoke,
            duration=ctx.duration,
            warmup=ctx.warmup,
            threads=THREADS,
            connections=list(ctx.connections),
            unit_connections=ctx.unit_connections,
            auth_workers=AUTH_WORKERS,
            introspection_tokens=ctx.tokens,
            groups=groups,
        ),
        unit_ms=round(ctx.unit_ms, 5),
        scenarios=scenarios,
    )
    run.targets = evaluate(run)
    return run


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
