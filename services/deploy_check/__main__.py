"""``python -m services.deploy_check [--deploy-dir deploy]``: exit 1 when any check fails."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.deploy_check.checks import CHECKS, check_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.deploy_check", description=__doc__)
    parser.add_argument("--deploy-dir", type=Path, default=Path(__file__).resolve().parents[2] / "deploy")
    args = parser.parse_args(argv)
    start = time.monotonic()
    failures = check_all(args.deploy_dir)
    print(
        f"deploy-check: {len(CHECKS) - len(failures)} passed, {len(failures)} failed ({time.monotonic() - start:.1f} s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
