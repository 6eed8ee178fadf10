"""``python -m auth_worker``: consume code-exchange jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from auth_worker.worker import Worker
from shared.config import ConfigError, WorkerConfig, load_config
from shared.logs import configure_logging


def main() -> int:
    try:
        config = load_config(WorkerConfig)
    except ConfigError as exc:
        print(f"auth_worker: {exc.description}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format, service="auth-worker")
    return Worker(config).run()


if __name__ == "__main__":
    sys.exit(main())
