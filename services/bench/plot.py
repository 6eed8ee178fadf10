"""The PNG of a run, to read at a glance: throughput against connections, latency percentiles, CPU units per request
by process type, and minidoor's rates over the peer's with the targets drawn in."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from services.bench.results import NOT_SUPPORTED, OK, STACK_TYPES, Results, Scenario
from services.bench.targets import INTROSPECTION_VS_PEER, LOGIN_VS_PEER

_PEER_COLOR = "#7f7f7f"
_TYPE_COLORS = dict(zip(STACK_TYPES, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728"), strict=True))


def draw(results: Results, path: Path) -> Path:
    # A bare Figure draws with the Agg canvas: no pyplot, no display, nothing global.
    figure = Figure(figsize=(15, 10), layout="constrained")
    axes = figure.subplots(2, 2)
    title = f"minidoor beside oidc-provider · {results.started_at} · {results.machine.cores} cores"
    if results.settings.smoke:
        title += " · smoke run (figures not comparable)"
    figure.suptitle(title + f" · 1 unit = {results.unit_ms:.4f} CPU-ms")
    _throughput(axes[0][0], results)
    _latency(axes[0][1], results)
    _units(axes[1][0], results)
    _versus(axes[1][1], results)
    unsupported = sorted({f"{s.kind} {s.alg}".strip() for s in results.scenarios if s.status == NOT_SUPPORTED})
    if unsupported:
        figure.supxlabel("not supported yet, so not drawn: " + ", ".join(unsupported), fontsize=9)
    figure.savefig(path, dpi=100)
    return path


def _series(results: Results) -> dict[str, list[Scenario]]:
    """Measured scenarios with a connection count, grouped into lines (everything but the connections)."""
    lines: dict[str, list[Scenario]] = {}
    for s in results.scenarios:
        if s.status == OK and s.connections and s.kind != "unit":
            name = s.label.removeprefix("minidoor: ").removeprefix("peer: ")
            lines.setdefault(f"{s.system}: {name}", []).append(s)
    return lines


def _throughput(ax: Axes, results: Results) -> None:
    for name, points in _series(results).items():
        style = "--" if name.startswith("peer") else "-"
        ax.plot([s.connections for s in points], [s.rate for s in points], style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(results.settings.connections), [str(c) for c in results.settings.connections])
    ax.set_xlabel("connections (wrk)")
    ax.set_ylabel("requests per second")
    ax.set_title("Throughput against connections")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _at_unit_connections(results: Results) -> list[Scenario]:
    return [
        s
        for s in results.scenarios
        if s.status == OK and s.connections == results.settings.unit_connections and s.kind != "unit"
    ]


def _short(s: Scenario) -> str:
    label = s.label.removeprefix("minidoor: ")
    for long, short in (
        ("client-credentials grant", "grant"),
        ("introspection over", "introspection,"),
        (" access token,", ","),
    ):
        label = label.replace(long, short)
    return label


def _latency(ax: Axes, results: Results) -> None:
    scenarios = _at_unit_connections(results)
    width = 0.27
    for i, (name, color) in enumerate((("p50", "#2ca02c"), ("p90", "#ff7f0e"), ("p99", "#d62728"))):
        values = [getattr(s.latency_ms, name) if s.latency_ms else 0.0 for s in scenarios]
        ax.barh([y + (i - 1) * width for y in range(len(scenarios))], values, width, label=name, color=color)
    ax.set_yticks(range(len(scenarios)), [_short(s) for s in scenarios], fontsize=7)
    ax.invert_yaxis()
    if scenarios:  # a run of groups without wrk windows (verification alone) has no bar to scale
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("milliseconds")
    ax.set_title(f"Latency percentiles at {results.settings.unit_connections} connections")
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _units(ax: Axes, results: Results) -> None:
    scenarios = _at_unit_connections(results)
    for y, s in enumerate(scenarios):
        left = 0.0
        for name, amount in s.units.items():
            color = _TYPE_COLORS.get(name, _PEER_COLOR)
            ax.barh(y, amount, left=left, color=color, label=name)
            left += amount
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set_yticks(range(len(scenarios)), [_short(s) for s in scenarios], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("CPU units per request (sandbox and load tool not included)")
    ax.set_title(f"CPU per request by process type at {results.settings.unit_connections} connections")
    ax.grid(True, axis="x", alpha=0.3)


def _versus(ax: Axes, results: Results) -> None:
    """minidoor's rate over the peer's at the same connections, one line per minidoor scenario kind."""
    peer = {(s.kind, s.alg, s.connections): s.rate for s in results.scenarios if s.system == "peer" and s.status == OK}
    for name, points in _series(results).items():
        if not name.startswith("minidoor"):
            continue
        ratios = [
            (s.connections, s.rate / rate)
            for s in points
            if (
                rate := peer.get(
                    ("grant" if s.kind == "login" else s.kind, s.alg if s.kind == "login" else "", s.connections)
                )
            )
        ]
        if ratios:
            ax.plot(*zip(*ratios, strict=True), marker="o", label=name.removeprefix("minidoor: "))
    for goal, what in ((LOGIN_VS_PEER, "login target"), (INTROSPECTION_VS_PEER, "introspection target")):
        ax.axhline(goal, color=_PEER_COLOR, linestyle=":", linewidth=1)
        ax.annotate(f"{what} {goal:g}x", (0.01, goal), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(results.settings.connections), [str(c) for c in results.settings.connections])
    ax.set_xlabel("connections (wrk)")
    ax.set_ylabel("minidoor rate / peer rate (same algorithm)")
    ax.set_title("minidoor beside the peer (1.0 = as fast)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
