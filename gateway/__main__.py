"""``python -m gateway``: run the public HTTP API until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from gateway.app import create_app
from shared.config import GatewayConfig, load_config_or_exit
from shared.logs import configure_logging
from shared.runtime import new_event_loop, serve


def main() -> int:
    config = load_config_or_exit(GatewayConfig, "gateway")
    configure_logging(config.log_level, config.log_format, service="gateway")
    serve(
        create_app(config),
        program="gateway",
        host=config.gateway_host,
        port=config.gateway_port,
        port_variable="GATEWAY_PORT",
        access_log=None,
        shutdown_timeout=config.shutdown_grace,
        loop=new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
