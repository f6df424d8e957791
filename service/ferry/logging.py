"""One JSON-lines log pipeline for ferry, uvicorn and gunicorn.

Every record, from gunicorn's first boot line on, leaves the process as one JSON object on one line,
written with a single ``os.write`` so that two workers sharing stdout never interleave (lines below
PIPE_BUF are atomic on a pipe). structlog renders; stdlib ``logging`` routes.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Loggers of the server stack. Their access loggers stay quiet: ferry writes the one access line.
_STACK_LOGGERS = ("uvicorn", "uvicorn.error", "gunicorn", "gunicorn.error")
_SILENT_LOGGERS = ("uvicorn.access", "gunicorn.access")


class JsonLineHandler(logging.Handler):
    """Writes each formatted record to a file descriptor in one ``write`` call."""

    def __init__(self, fd: int = 1) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = memoryview((self.format(record) + "\n").encode("utf-8", "replace"))
            while data:  # os.write may be partial for very long lines; keep going
                data = data[os.write(self.fd, data) :]
        except Exception as exc:  # a logging failure must never become a request failure
            fallback = {
                "level": "error",
                "event": "log_record_unrenderable",
                "logger": record.name,
                "original": str(record.msg)[:500],
                "error": repr(exc)[:500],
            }
            with contextlib.suppress(OSError):
                os.write(self.fd, orjson.dumps(fallback) + b"\n")


def _add_pid(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("pid", os.getpid())
    return event


def _drop_noise(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    return event


def _serialize(event: dict[str, Any], **_: Any) -> str:
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_render_json = structlog.processors.JSONRenderer(serializer=_serialize)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_pid,
    ]


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """Formatter for stdlib records (ours via structlog, and foreign ones from the server stack)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _drop_noise,
            _render_json,
        ],
    )


def dict_config(level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` document; gunicorn's master uses it as ``logconfig_dict``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": json_formatter}},
        "handlers": {"json": {"()": JsonLineHandler, "formatter": "json"}},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            **{name: {"level": level, "handlers": [], "propagate": True} for name in _STACK_LOGGERS},
            **{name: {"level": "CRITICAL", "handlers": [], "propagate": False} for name in _SILENT_LOGGERS},
        },
    }


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("ferry").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("ferry").error(
        "uncaught_thread_exception",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        extra={"thread": getattr(args.thread, "name", None)},
    )


def configure_logging(level: str = "INFO") -> None:
    """Route every logger of this process through the JSON pipeline. Idempotent."""
    logging.config.dictConfig(dict_config(level))
    logging.raiseExceptions = False  # a broken pipe must not print a plain-text traceback
    logging.captureWarnings(True)  # library warnings become JSON records, not stderr text
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
