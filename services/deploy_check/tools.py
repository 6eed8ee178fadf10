"""The pinned command-line tools, from the venv that runs this check (deploy/requirements.deploy-check.lock)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class ToolMissing(Exception):
    """A tool of the deploy-check lock is not installed (``make deploy-check`` installs them)."""


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ToolMissing(f"{name} is not installed in {path.parent} (make deploy-check installs it)")
    return str(path)


def run(name: str, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run a tool; its exit code and its stdout and stderr together."""
    proc = subprocess.run([tool(name), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_jsonschema(schema: Path, instance: Path) -> tuple[int, str]:
    """``check-jsonschema --schemafile schema instance``, in this process (one import for every file checked)."""
    from check_jsonschema.cli.main_command import main
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["--schemafile", str(schema), str(instance)])
    return result.exit_code, result.output.strip()
