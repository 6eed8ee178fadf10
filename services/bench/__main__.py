"""``python -m services.bench [NAME ...]``: run the benchmarks (all by default) and print each beside its baseline."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import msgspec

from services.bench.harness import BenchContext, Result
from services.bench.logins import logins_over_http
from services.bench.tokens import introspection_over_http, local_verification
from shared.logs import configure_logging
from shared.runtime import new_event_loop

#: Name -> benchmark. Each gets the shared BenchContext and returns Results; add new ones here.
BENCHMARKS: dict[str, Callable[[BenchContext], Awaitable[list[Result]]]] = {
    "introspection": introspection_over_http,
    "verification": local_verification,
    # Last: its thousands of new users and tokens would otherwise sit in the tables the others read.
    "login": logins_over_http,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="any of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per rate (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each measurement (default 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP requests in flight (default 32)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    configure_logging("warning", "auto", service="bench")
    ctx = BenchContext(duration=args.duration, warmup=args.warmup, concurrency=args.concurrency)
    names = args.names or list(BENCHMARKS)
    if unknown := [name for name in names if name not in BENCHMARKS]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            results = runner.run(_run(names, ctx))
    finally:
        ctx.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode([_row(r) for r in results]).decode() + "\n")
    else:
        _print_table(results)
    return 0


async def _run(names: list[str], ctx: BenchContext) -> list[Result]:
    results: list[Result] = []
    for name in names:
        results.extend(await BENCHMARKS[name](ctx))
    return results


def _row(result: Result) -> dict[str, object]:
    digits = 1 if result.unit == "/s" else 3
    row: dict[str, object] = {
        "name": result.name,
        "rate": round(result.rate, digits),
        "baseline": result.baseline_name,
        "baselineRate": round(result.baseline_rate, digits),
        "ratio": round(result.ratio, 3),
    }
    # Only when set, so rows of plain rates keep their shape.
    if result.unit != "/s":
        row["unit"] = result.unit
    if result.parts:
        row["parts"] = {name: round(amount, digits) for name, amount in result.parts}
    if result.note:
        row["note"] = result.note
    return row


def _print_table(results: list[Result]) -> None:
    print(f"{'benchmark':<30} {'rate':>12}   {'baseline':<30} {'rate':>12}   ratio")
    for r in results:
        print(
            f"{r.name:<30} {_amount(r.rate, r.unit)}   {r.baseline_name:<30} {_amount(r.baseline_rate, r.unit)}"
            f"   {r.ratio:.2f}"
        )
        if r.parts:
            print("    " + ", ".join(f"{name} {amount:,.2f}{r.unit}" for name, amount in r.parts))
        if r.note:
            print("    " + r.note)


def _amount(value: float, unit: str) -> str:
    # Rates read best whole; anything else (milliseconds) needs its decimals.
    return f"{value:>10,.0f}{unit}" if unit == "/s" else f"{value:>10,.2f}{unit}"


if __name__ == "__main__":
    sys.exit(main())
