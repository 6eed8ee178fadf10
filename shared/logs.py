"""structlog set-up shared by every process: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
import structlog.tracebacks
from aiohttp.http_exceptions import HttpProcessingError

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _redact_aiohttp(record: logging.LogRecord) -> bool:
    """aiohttp's own lines about a malformed request carry the raw request (its ``Authorization`` header
    included) in the exception's message: keep the line, name the exception, drop its text and traceback."""
    if record.name.startswith("aiohttp") and record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        if isinstance(exc, HttpProcessingError | ConnectionError):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
    return True


def _dumps(event: object, default: Callable[[Any], Any] | None = None, **_kw: object) -> str:
    """structlog's JSON serializer, by msgspec: what it cannot encode is rendered by ``default`` (repr)."""
    return msgspec.json.encode(event, enc_hook=default or repr).decode()


def configure_logging(level: str = "info", fmt: str = "auto", service: str = "") -> None:
    """Configure structlog, and route stdlib loggers (aiohttp, asyncpg) through the same renderer.

    Called once, from a process's ``__main__``; ``service`` is bound to every line.
    """
    processors = list(_SHARED_PROCESSORS)
    if service:
        # A processor, not a context variable: per-request clear_contextvars() must not erase it.
        processors.insert(0, lambda _logger, _name, event: {"service": service, **event})
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps) if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    # Tracebacks without local variables: locals hold secrets (internal token, WeChat secret, session_key).
    no_locals = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    exc_processor: list[structlog.types.Processor] = (
        [structlog.processors.ExceptionRenderer(no_locals)] if as_json else []
    )
    numeric_level = logging.getLevelName(level.upper())

    # Our own lines go straight to stderr, rendered once: through the stdlib's logging (a LogRecord, a handler,
    # a formatter) a canonical line cost about twice as much, and every request and job writes one.
    structlog.configure(
        processors=[*processors, *exc_processor, renderer],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc_processor,
                renderer,
            ],
        )
    )
    handler.addFilter(_redact_aiohttp)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # One canonical line per request comes from our middleware; aiohttp's access log would double it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pgserver narrates every pg_ctl call at INFO; its failures still come through.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
