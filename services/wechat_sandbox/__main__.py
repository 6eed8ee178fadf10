"""``python -m services.wechat_sandbox``: serve the sandbox until SIGINT/SIGTERM; exit 2 on a bad environment."""

from __future__ import annotations

import sys

import structlog

from services.wechat_sandbox.app import create_app
from shared.config import ConfigError, SandboxConfig, load_config
from shared.logs import configure_logging
from shared.runtime import serve


def main() -> int:
    try:
        config = load_config(SandboxConfig)
        app = create_app(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format, service="wechat-sandbox")
    structlog.get_logger("wechat_sandbox").info(
        "sandbox_starting", host=config.wechat_sandbox_host, port=config.wechat_sandbox_port
    )
    serve(
        app,
        program="wechat-sandbox",
        host=config.wechat_sandbox_host,
        port=config.wechat_sandbox_port,
        port_variable="WECHAT_SANDBOX_PORT",
        shutdown_timeout=5.0,  # every sandbox answer is immediate
        handle_signals=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
