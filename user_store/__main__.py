"""``python -m user_store``: read the config from the environment and serve until SIGTERM."""

from __future__ import annotations

import sys

from shared.config import ConfigError, UserStoreConfig, load_config_or_exit
from shared.logs import configure_logging
from shared.runtime import new_event_loop, serve
from user_store.app import create_app


def main() -> None:
    config = load_config_or_exit(UserStoreConfig, "user-store")
    configure_logging(config.log_level, config.log_format, service="user-store")
    try:
        serve(
            create_app(config),
            program="user-store",
            host=config.user_store_host,
            port=config.user_store_port,
            port_variable="USER_STORE_PORT",
            shutdown_timeout=config.shutdown_grace,
            loop=new_event_loop(),
        )
    except ConfigError as exc:  # found while starting, e.g. a missing or wrong master key
        print(f"user-store: {exc.description}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
