"""``make bench-smoke``'s check of a run's files and fields (not of its speeds): the JSON decodes as ``Results`` and
holds every scenario of the matrix with the figures its kind must have, the Markdown lists every target, and the
PNG is a picture. Returns the problems found; none means the run's outputs are whole."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import msgspec

from services.bench.results import (
    APART_TYPES,
    NOT_SUPPORTED,
    OK,
    SCHEMA,
    STACK_TYPES,
    Profile,
    Results,
    Scenario,
    expected_keys,
    read,
)

VERSIONS = ("python", "minidoor", "aiohttp", "uvloop", "pyjwt", "cryptography", "node", "oidc-provider", "wrk")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Smallest picture a person can read the four charts on.
_MIN_PIXELS = (800, 600)


def check_run(json_path: Path) -> list[str]:
    try:
        results = read(json_path)
    except (OSError, msgspec.DecodeError) as exc:
        return [f"{json_path}: {exc}"]
    problems = list(_results(results))
    problems += _profiles(results, json_path.parent)
    problems += _markdown(json_path.with_suffix(".md"), results)
    problems += _png(json_path.with_suffix(".png"))
    return problems


def _results(results: Results) -> Iterator[str]:
    if results.schema != SCHEMA:
        yield f"schema {results.schema}, expected {SCHEMA}"
    if results.machine.cores < 1 or not results.machine.cpu_model:
        yield "the machine is not described"
    yield from (f"no version of {name}" for name in VERSIONS if not results.versions.get(name))
    if results.unit_ms <= 0:
        yield "no unit: unitMs is not positive"
    keys = [s.key for s in results.scenarios]
    expected = expected_keys(results.settings.groups, results.settings.connections)
    if sorted(keys) != sorted(expected):
        missing, extra = sorted(set(expected) - set(keys)), sorted(set(keys) - set(expected))
        yield f"scenarios differ from the matrix: missing {missing}, unexpected {extra}, {len(keys)} rows"
    for s in results.scenarios:
        yield from (f"{s.key}: {problem}" for problem in _scenario(s))
    targeted = {t.scenario for t in results.targets}
    for s in results.scenarios:
        if s.system == "minidoor" and s.kind != "unit" and s.key not in targeted:
            yield f"{s.key}: no target evaluated on it"
    for t in results.targets:
        if t.scenario not in keys:
            yield f"target {t.name!r} names an unknown scenario {t.scenario}"
        if (t.figure is None) != (t.met is None) or not t.verdict:
            yield f"target {t.name!r} on {t.scenario}: figure, met and verdict disagree"


def _profiles(results: Results, directory: Path) -> Iterator[str]:
    """Every miss a profile explains names where the time goes: its scenario has profiles whose files exist and
    whose digests list frames, or (a smoke run) says why not while another scenario of its kind has them."""
    profiled_kinds = {s.kind for s in results.scenarios if s.profiles}
    for t in results.targets:
        if t.met is not False:
            continue
        if not t.explanation.startswith("missed"):
            yield f"target {t.name!r} on {t.scenario}: missed, but no explanation"
        s = results.scenario(t.scenario)
        if not t.profiled or s is None:
            continue
        if not s.profiles:
            if not (results.settings.smoke and s.unprofiled and s.kind in profiled_kinds):
                yield f"{s.key}: missed {t.name!r} and has no profile"
            continue
        for p in s.profiles:
            yield from (f"{s.key}: {problem}" for problem in _profile(p, directory))
            if not p.error and p.svg not in t.explanation:
                yield f"target {t.name!r} on {s.key}: the explanation does not name {p.svg}"


def _profile(p: Profile, directory: Path) -> Iterator[str]:
    if p.error:
        yield f"no profile of {p.process}: {p.error}"
        return
    if not p.frames or p.samples <= 0 or not 0 < p.frames[0].self_percent <= 100:
        yield f"the profile of {p.process} has no digest"
    for name in (p.svg, p.stacks):
        if not (directory / name).is_file() or not (directory / name).stat().st_size:
            yield f"{name} is missing or empty"
            return
    if not (directory / p.svg).read_text().startswith("<svg"):
        yield f"{p.svg} is not an SVG"


def _scenario(s: Scenario) -> Iterator[str]:
    if s.status == NOT_SUPPORTED:
        if s.rate or s.units:
            yield "not supported yet, but has figures"
        return
    if s.status != OK:
        yield f"unknown status {s.status!r}"
        return
    if s.kind == "verification":
        if s.rate <= 0 or s.baseline_rate <= 0 or not s.baseline:
            yield "no rate, or no baseline rate beside it"
        if s.units_total <= 0:
            yield "no CPU units"
        return
    yield from _load_figures(s)


def _load_figures(s: Scenario) -> Iterator[str]:
    """What every wrk window records."""
    # Answers, not successes: a window of a loaded machine may shed every login (503), which is a figure too.
    if s.requests <= 0 or s.seconds <= 0 or s.errors is None or s.latency_ms is None:
        yield "requests, seconds, errors or latency missing"
    elif not s.latency_ms.p50 <= s.latency_ms.p90 <= s.latency_ms.p99 <= s.latency_ms.max:
        yield "latency percentiles out of order"
    types = list(STACK_TYPES) if s.system == "minidoor" else [s.system]
    if list(s.units) != types or list(s.peak_rss_mib) != types:
        yield f"units {list(s.units)} and peak RSS {list(s.peak_rss_mib)} are not by {types}"
    apart = list(APART_TYPES) if s.system == "minidoor" else list(APART_TYPES[1:])
    if list(s.units_apart) != apart:
        yield f"counted apart: {list(s.units_apart)}, expected {apart}"
    if s.units_total <= 0 or abs(s.units_total - sum(s.units.values())) > 0.05:
        yield f"unitsTotal {s.units_total} is not the sum of {s.units}"
    if s.kind == "login" and s.new_users is None:
        yield "no share of new users"
    if s.kind == "introspection" and s.system == "minidoor":
        if s.revocation is None or not s.revocation.inactive_after_ms:
            yield "no revocation measured"


def _markdown(path: Path, results: Results) -> Iterator[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        yield f"{path}: {exc}"
        return
    for heading in ("## Targets", "## Scenarios"):
        if heading not in text:
            yield f"{path.name}: no {heading!r}"
    for t in results.targets:
        if t.explanation and t.explanation not in text:
            yield f"{path.name}: the miss of {t.name!r} on {t.scenario} is not explained"
    for t in results.targets:
        if f"| {t.name} | `{t.scenario}` |" not in text:
            yield f"{path.name}: target {t.name!r} on {t.scenario} is not listed"
    for s in results.scenarios:
        if f"| {s.label} |" not in text:
            yield f"{path.name}: scenario {s.key} is not listed"


def _png(path: Path) -> Iterator[str]:
    try:
        head = path.read_bytes()[:24]
    except OSError as exc:
        yield f"{path}: {exc}"
        return
    if len(head) < 24 or not head.startswith(_PNG_MAGIC) or head[12:16] != b"IHDR":
        yield f"{path.name}: not a PNG"
        return
    width, height = struct.unpack(">II", head[16:24])
    if width < _MIN_PIXELS[0] or height < _MIN_PIXELS[1]:
        yield f"{path.name}: {width}x{height} pixels, too small to read"
