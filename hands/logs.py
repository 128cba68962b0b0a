"""One logging set-up for every brainhands service: structlog over stdlib, JSON off a terminal."""

from __future__ import annotations

import logging
import os
import sys
import threading

import orjson
import structlog

from hands import tracing

#: Fields every line of this process carries (a gateway worker's index), set once with bind_process().
_PROCESS_FIELDS: dict = {}


def bind_process(**fields) -> None:
    """Put fields on every log line this process writes from now on (the per-call context is cleared per call)."""
    _PROCESS_FIELDS.update(fields)


def add_process_fields(_logger, _method, event: dict) -> dict:
    if _PROCESS_FIELDS:
        for key, value in _PROCESS_FIELDS.items():
            event.setdefault(key, value)
    return event


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        add_process_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        add_trace_id,
    ]


def add_trace_id(_logger, _method, event: dict) -> dict:
    """Put the current OpenTelemetry trace and span ids in the line, so a log line leads to its trace."""
    if tracing.enabled() and "trace_id" not in event:
        span = tracing.current_span()
        if span is not None:
            c = span.get_span_context()
            event["trace_id"] = format(c.trace_id, "032x")
            event["span_id"] = format(c.span_id, "016x")
    return event


def _orjson_text(obj, **kw) -> str:
    # orjson writes the same JSON as json.dumps about ten times faster; the stream wants text.
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS, **kw).decode()


class _LineLogger:
    """Writes one rendered line per event to the stream, under the stdlib handler's lock.

    structlog's own events skip stdlib logging (a LogRecord, a handler chain and a formatter
    per line cost more than the rest of a gateway call's Python work); sharing the handler's
    lock keeps them from interleaving with the third-party lines that still go through stdlib.
    """

    def __init__(self, name: str, stream, lock: threading.RLock):
        self.name = name  # add_logger_name reads it
        self._write = stream.write
        self._flush = stream.flush
        self._lock = lock

    def msg(self, line: str) -> None:
        with self._lock:
            self._write(line + "\n")
            self._flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LineLoggerFactory:
    def __init__(self, stream, lock: threading.RLock):
        self._stream = stream
        self._lock = lock

    def __call__(self, *args) -> _LineLogger:
        name = args[0] if args and isinstance(args[0], str) else _caller_module()
        return _LineLogger(name, self._stream, self._lock)


def _caller_module() -> str:
    """The module that asked for a nameless logger, as stdlib's LoggerFactory would name it."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("structlog", __name__)):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "root") if frame is not None else "root"


def configure_logging(fmt: str | None = None, level: str | int = "info", stream=None) -> None:
    """Route structlog and stdlib logging (grpc, httpx, asyncpg) through one renderer.

    fmt is "json" or "console"; None reads BRAINHANDS_LOG_FORMAT, then picks console
    on a terminal and JSON otherwise. Logs go to stderr: stdout belongs to results.
    In JSON, structlog events are rendered and written directly (the per-call path); stdlib
    records of third-party libraries get the same fields through ProcessorFormatter.
    """
    stream = stream or sys.stderr
    fmt = fmt or os.environ.get("BRAINHANDS_LOG_FORMAT") or ("console" if stream.isatty() else "json")
    if fmt not in ("json", "console"):
        raise ValueError(f"BRAINHANDS_LOG_FORMAT must be 'json' or 'console', not {fmt!r}")
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    renderer = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared = _shared_processors()
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
    if fmt == "json":
        structlog.configure(
            processors=[*shared, structlog.processors.format_exc_info, renderer],
            logger_factory=_LineLoggerFactory(stream, handler.lock),
            # Drops calls below the level before any processor runs.
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
    else:  # a person at a terminal: speed does not matter, stdlib's path does the rendering
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

