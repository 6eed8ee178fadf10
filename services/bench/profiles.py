"""CPU profiles of a scenario that missed a target: py-spy attached by pid to the Python processes that dominate it,
in a short second window of the same load after the measured one (so the sampler's overhead skews no figure).
Each lands beside the results as ``<time>/<scenario>-<process>.svg`` (a flame graph) and ``.txt`` (py-spy's
collapsed stacks, which speedscope and flamegraph.pl read), digested to the frames with the most self time."""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from xml.sax.saxutils import escape

from services.bench.results import Frame, Profile, Scenario

RATE = 100
TOP_FRAMES = 10
#: A Python process type is profiled when it costs at least this share of the scenario's units; the busiest always is.
DOMINANT_SHARE = 0.2
#: Process types py-spy can read; PostgreSQL and Redis are named in the digest by their units only.
PYTHON_TYPES = ("gateway", "workers", "user store", "verifier")
#: py-spy attaches in well under this; the window starts after it.
_ATTACH = 0.5
_STOP_TIMEOUT = 20.0
_WIDTH, _ROW = 1200, 16


def dominant(s: Scenario) -> list[str]:
    """The Python process types that dominate ``s``, busiest first."""
    ranked = sorted((name for name in s.units if name in PYTHON_TYPES), key=lambda name: -s.units[name])
    return [name for i, name in enumerate(ranked) if i == 0 or s.units[name] >= DOMINANT_SHARE * s.units_total]


async def record(
    s: Scenario, pids: Mapping[str, int], directory: Path, root: Path, window: Callable[[], Awaitable[object]]
) -> list[Profile]:
    """Sample each of ``pids`` (process type -> pid) while ``window`` runs; paths are kept relative to ``root``."""
    started = await asyncio.to_thread(_start, s, pids, directory)
    await asyncio.sleep(_ATTACH)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await window()
    seconds = round(loop.time() - begun, 2)
    profiles = []
    for name, (process, stacks) in started.items():
        error = await asyncio.to_thread(_stop, process)
        units = s.units.get(name, 0.0)
        profiles.append(await asyncio.to_thread(_digest, name, pids[name], units, stacks, root, seconds, error))
    return profiles


def _start(
    s: Scenario, pids: Mapping[str, int], directory: Path
) -> dict[str, tuple[subprocess.Popen[bytes] | None, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = s.key.replace("/", "-")
    # Beside the interpreter first: a venv's scripts need not be on PATH.
    beside = Path(sys.executable).parent / "py-spy"
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    started: dict[str, tuple[subprocess.Popen[bytes] | None, Path]] = {}
    for name, pid in pids.items():
        stacks = directory / f"{stem}-{name.replace(' ', '-')}.txt"
        process = None
        if py_spy is not None:
            args = [py_spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--function"]
            process = subprocess.Popen(
                [*args, "--output", str(stacks)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        started[name] = (process, stacks)
    return started


def _stop(process: subprocess.Popen[bytes] | None) -> str:
    """Ctrl-C, as py-spy expects, then its verdict: "" when it wrote its file."""
    if process is None:
        return "py-spy is not installed (it is in the dev extra of requirements.lock)"
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return "py-spy did not stop"
    if process.returncode != 0:
        return "py-spy failed: " + err.decode(errors="replace").strip().splitlines()[-1:][0][:300]
    return ""


def _digest(name: str, pid: int, units: float, stacks: Path, root: Path, seconds: float, error: str) -> Profile:
    svg = stacks.with_suffix(".svg")
    made = functools.partial(
        Profile,
        process=name,
        pid=pid,
        units=units,
        seconds=seconds,
        svg=str(svg.relative_to(root)),
        stacks=str(stacks.relative_to(root)),
    )
    if error or not stacks.exists():
        return made(error=error or "py-spy wrote no stacks")
    counts = _collapsed(stacks.read_text())
    total = sum(counts.values())
    if not total:
        return made(error="no samples: the process was idle")
    own: dict[str, int] = {}
    for stack, count in counts.items():
        own[stack[-1]] = own.get(stack[-1], 0) + count
    top = sorted(own.items(), key=lambda item: -item[1])[:TOP_FRAMES]
    svg.write_text(_flame_graph(counts, f"{name} (pid {pid}), {total} samples at {RATE} Hz over {seconds:g} s"))
    frames = [Frame(function=function, self_percent=round(100 * count / total, 1)) for function, count in top]
    return made(samples=total, frames=frames)


def _collapsed(text: str) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            key = tuple(stack.split(";"))
            counts[key] = counts.get(key, 0) + int(count)
    return counts


def _flame_graph(counts: Mapping[tuple[str, ...], int], title: str) -> str:
    """An icicle graph (callers above callees), one rectangle per frame, its share in its tooltip."""
    total = sum(counts.values())
    tree: dict[tuple[str, ...], int] = {}
    for stack, count in counts.items():
        for depth in range(1, len(stack) + 1):
            tree[stack[:depth]] = tree.get(stack[:depth], 0) + count
    offsets: dict[tuple[str, ...], float] = {(): 0.0}
    cursor: dict[tuple[str, ...], float] = {}
    rects = []
    for path in sorted(tree, key=lambda p: (len(p), p)):
        parent = path[:-1]
        x = cursor.get(parent, offsets[parent])
        width = tree[path] / total * _WIDTH
        cursor[parent] = x + width
        offsets[path] = x
        if width < 0.3:
            continue
        y = 24 + (len(path) - 1) * _ROW
        hue = zlib.crc32(path[-1].encode()) % 60
        label = escape(path[-1][: int(width / 7)]) if width > 21 else ""
        tip = escape(f"{path[-1]}: {tree[path]} samples, {100 * tree[path] / total:.1f} %")
        rects.append(
            f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{_ROW - 1}" '
            f'fill="hsl({hue},80%,60%)"/><text x="{x + 2:.1f}" y="{y + 12}">{label}</text></g>'
        )
    height = 24 + (max(map(len, counts), default=1)) * _ROW + 8
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" font-family="monospace" '
        f'font-size="11"><text x="4" y="16" font-size="13">{escape(title)}</text>{"".join(rects)}</svg>\n'
    )
