"""``python -m auth_worker``: consume code-exchange jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from auth_worker.worker import Worker
from shared.config import WorkerConfig, load_config_or_exit
from shared.logs import configure_logging


def main() -> int:
    config = load_config_or_exit(WorkerConfig, "auth_worker")
    configure_logging(config.log_level, config.log_format, service="auth-worker")
    return Worker(config).run()


if __name__ == "__main__":
    sys.exit(main())
