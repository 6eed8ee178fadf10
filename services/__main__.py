"""``python -m services run`` (the whole stack) and ``python -m services admin ...`` (management)."""

from __future__ import annotations

import argparse
import sys

from services import admin
from shared.config import RunnerConfig, load_config_or_exit
from shared.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the whole stack in the foreground (what `make run` does)")
    admin.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "admin":
        return admin.run(args)
    config = load_config_or_exit(RunnerConfig, "minidoor")
    configure_logging(config.log_level, config.log_format, service="runner")
    from services.runner import Runner  # imports the user store's code; not needed for --help

    return Runner(config).run()


if __name__ == "__main__":
    sys.exit(main())
