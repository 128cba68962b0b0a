"""One logging set-up for every brainhands service: structlog over stdlib, JSON off a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(fmt: str | None = None, level: str | int = "info", stream=None) -> None:
    """Route structlog and stdlib logging (grpc, httpx, asyncpg) through one renderer.

    fmt is "json" or "console"; None reads BRAINHANDS_LOG_FORMAT, then picks console
    on a terminal and JSON otherwise. Logs go to stderr: stdout belongs to results.
    """
    global _configured
    stream = stream or sys.stderr
    fmt = fmt or os.environ.get("BRAINHANDS_LOG_FORMAT") or ("console" if stream.isatty() else "json")
    if fmt not in ("json", "console"):
        raise ValueError(f"BRAINHANDS_LOG_FORMAT must be 'json' or 'console', not {fmt!r}")
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else (lambda _l, _m, e: e),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    _configured = True


def get_logger(name: str | None = None):
    return structlog.get_logger(name)
