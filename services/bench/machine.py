"""The machine a run measured on and the versions of everything in it, for the JSON and the summaries."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from services.bench.cpu import StackCpu
from services.bench.peer import peer_versions
from services.bench.results import Machine
from services.bench.wrk import wrk_binary

#: Distribution -> the name it is listed under (``redis`` is also the server's).
_PACKAGES = {
    "aiohttp": "aiohttp",
    "uvloop": "uvloop",
    "pyjwt": "pyjwt",
    "cryptography": "cryptography",
    "msgspec": "msgspec",
    "asyncpg": "asyncpg",
    "redis": "redis-py",
}


def machine() -> Machine:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return Machine(
        cpu_model=model or platform.processor() or platform.machine(),
        cores=os.cpu_count() or 0,
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        kernel=platform.release(),
    )


def versions(stack: StackCpu | None) -> dict[str, str]:
    """Python, minidoor's commit, the Python packages on the hot paths, the peer's Node and oidc-provider, wrk, and
    the embedded PostgreSQL and Redis servers (when the run started the stack)."""
    found = {"python": platform.python_version(), "minidoor": _commit()}
    found |= {listed: metadata.version(name) for name, listed in _PACKAGES.items()}
    found |= peer_versions()
    found["wrk"] = _first_line([wrk_binary(), "--version"]).split(" [")[0].removeprefix("wrk ")
    if stack is not None:
        found |= {
            f"{name} server": _version(_first_line([exe, "--version"])) for name, exe in stack.executables().items()
        }
    return found


def _commit() -> str:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _version(line: str) -> str:
    """``16.2`` of ``postgres (PostgreSQL) 16.2``, ``6.2.14`` of ``Redis server v=6.2.14 sha=...``."""
    found = re.search(r"\d+(\.\d+)+", line)
    return found.group(0) if found else line


def _first_line(args: list[str]) -> str:
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    return ((out.stdout or out.stderr).strip().splitlines() or ["unknown"])[0]
