"""The console table and the Markdown summary of a run, both drawn from its ``Results``."""

from __future__ import annotations

from collections.abc import Iterator

from services.bench.results import OK, Results, Scenario, key

_HEADER = ("scenario", "conns", "rate/s", "vs peer", "p50 ms", "p90 ms", "p99 ms", "errors", "units", "peak MiB")


def console(results: Results) -> str:
    """A fixed-width table, a line of units under each measured stack row, then the targets."""
    widths = (58, 5, 9, 7, 8, 8, 8, 6, 7, 8)
    lines = [
        _title(results),
        "",
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(_HEADER, widths, strict=True))),
    ]
    for s in results.scenarios:
        cells = _cells(results, s)
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )
        lines += ["    " + detail for detail in _details(s)]
    lines += ["", "targets: " + _tally(results)]
    for t in results.targets:
        figure = "" if t.figure is None else f"{t.figure:g}"
        lines.append(
            f"  {'ok ' if t.met else '-- ' if t.met is None else 'NO '} {t.name} [{t.scenario}]: {figure} ({t.verdict})"
        )
        if t.explanation:
            lines.append(f"       {t.explanation}")
    return "\n".join(lines)


def markdown(results: Results, png_name: str) -> str:
    machine, settings = results.machine, results.settings
    versions = ", ".join(f"{name} {version}" for name, version in results.versions.items())
    lines = [
        f"# minidoor bench, {results.started_at}",
        "",
        f"{machine.cores} cores ({machine.cpu_model}), {machine.memory_gib:g} GiB, Linux {machine.kernel}. {versions}.",
        "",
        f"Windows of {settings.duration} s after {settings.warmup} s of warm-up, wrk with {settings.threads} threads"
        f"{' (smoke run: figures are not comparable)' if settings.smoke else ''}. "
        f"**1 unit = {results.unit_ms:.4f} CPU-ms**, one request to a trivial aiohttp JSON endpoint (2 processes, "
        f"uvloop) at {settings.unit_connections} connections in this run; every CPU figure below is in units per "
        "request. Units sum the gateway, the auth workers, the user store, PostgreSQL and Redis (the peer: its one "
        "process); the WeChat sandbox and the load tool are counted apart.",
        "",
        f"![throughput, latency, CPU units and minidoor beside the peer]({png_name})",
        "",
        "## Targets",
        "",
        _tally(results) + ".",
        "",
        "| target | scenario | figure | goal | verdict |",
        "|---|---|---:|---|---|",
    ]
    for t in results.targets:
        figure = "" if t.figure is None else f"{t.figure:g}"
        verdict = f"**{t.verdict}**" if t.met is False else t.verdict
        lines.append(f"| {t.name} | `{t.scenario}` | {figure} | {t.goal} | {verdict} |")
    misses = [t for t in results.targets if t.explanation]
    if misses:
        lines += [
            "",
            "## Misses",
            "",
            "Each miss: by how much, where the CPU goes (units by process type; for the Python processes that dominate "
            "it, the frames with the most self time in a py-spy profile of a second window of the same load), and the "
            "flame graphs (beside each, `.txt`: the collapsed stacks, for speedscope or flamegraph.pl).",
            "",
            *(f"- {t.name} (`{t.scenario}`): {t.explanation}" for t in misses),
        ]
    lines += [
        "",
        "## Scenarios",
        "",
        "| " + " | ".join(_HEADER) + " | units by process | apart |",
        "|---|" + "---:|" * (len(_HEADER) - 1) + "---|---|",
    ]
    for s in results.scenarios:
        own = ", ".join(f"{name} {amount:g}" for name, amount in s.units.items()) if len(s.units) > 1 else ""
        apart = ", ".join(f"{name} {amount:g}" for name, amount in s.units_apart.items())
        lines.append("| " + " | ".join([*_cells(results, s), own, apart]) + " |")
    notes = [f"`{s.key}`: {detail}" for s in results.scenarios for detail in _details(s, units=False)]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _tally(results: Results) -> str:
    met = sum(t.met is True for t in results.targets)
    missed = sum(t.met is False for t in results.targets)
    return f"{met} met, {missed} missed, {len(results.targets) - met - missed} not measured"


def _title(results: Results) -> str:
    unit = results.scenario(key("unit", "unit"))
    rate = f", {unit.rate:,.0f} req/s" if unit is not None else ""
    return (
        f"minidoor bench {results.started_at} · {results.machine.cores} cores, {results.machine.cpu_model} · "
        f"1 unit = {results.unit_ms:.4f} CPU-ms (trivial aiohttp endpoint, 2 processes{rate})"
    )


def _cells(results: Results, s: Scenario) -> list[str]:
    conns = str(s.connections) if s.connections else ""
    if s.status != OK:
        return [s.label, conns, s.status, "", "", "", "", "", "", ""]
    versus = _versus(results, s)
    latency, errors = s.latency_ms, s.errors
    peak = max(s.peak_rss_mib.values(), default=0.0)
    return [
        s.label,
        conns,
        f"{s.rate:,.0f}",
        f"{versus:.2f}x" if versus is not None else "",
        f"{latency.p50:.2f}" if latency else "",
        f"{latency.p90:.2f}" if latency else "",
        f"{latency.p99:.2f}" if latency else "",
        str(errors.total) if errors else "",
        f"{s.units_total:.2f}",
        f"{peak:.0f}" if peak else "",
    ]


def _versus(results: Results, s: Scenario) -> float | None:
    """The rate over what it is compared with: the peer's at the same connections, or a same-process baseline."""
    if s.kind == "verification":
        return s.rate / s.baseline_rate if s.baseline_rate else None
    if s.system != "minidoor":
        return None
    kind = "grant" if s.kind == "login" else s.kind
    peer = results.scenario(key("peer", kind, alg=s.alg if kind == "grant" else "", connections=s.connections))
    return s.rate / peer.rate if peer is not None and peer.status == OK and peer.rate else None


def _details(s: Scenario, *, units: bool = True) -> Iterator[str]:
    if s.status != OK:
        return
    if units and len(s.units) > 1:
        own = " · ".join(f"{name} {amount:.2f}" for name, amount in s.units.items())
        apart = " · ".join(f"{name} {amount:.2f}" for name, amount in s.units_apart.items())
        yield f"units: {own} | apart: {apart}"
    if s.new_users is not None:
        yield f"new users: {s.new_users:.0%} of logins"
    if s.baseline:
        yield f"beside {s.baseline}: {s.baseline_rate:,.0f}/s"
    if s.revocation is not None:
        lags = ", ".join(f"{name} after {ms:g} ms" for name, ms in s.revocation.inactive_after_ms.items())
        yield (
            f"one token revoked mid-window: answered after {s.revocation.answered_ms:g} ms, inactive at {lags}"
            f" ({s.revocation.inactive_answers} inactive answers in the window)"
        )
    yield from s.notes
