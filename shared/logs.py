"""Logging for both sides: one JSON object a line, carrying the request and job ids in scope.

`bind(request_id=..., job_id=...)` adds fields to every record logged from the current context
(an HTTP request's task on the API, the running job on the worker); `log_context` does the
same for a block and undoes it after.
"""

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS

LogFormat = Literal["json", "text"]

_fields: ContextVar[dict[str, str] | None] = ContextVar("tokenq_log_fields", default=None)


def bind(**fields: str | None) -> None:
    """Add fields to the records of the current context (None values are left out)."""
    _fields.set({**(_fields.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def bound() -> dict[str, str]:
    return dict(_fields.get() or {})


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    token = _fields.set(_fields.get())
    try:
        bind(**fields)
        yield
    finally:
        _fields.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record, where the formatters find them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_fields.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class QuietProbes(logging.Filter):
    """Leaves scrapes and probes (`/metrics`, `/healthz`, `/readyz`) out of the access log."""

    PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access: (client, method, path with query, HTTP version, status)
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 2 and args[2] in self.PATHS)


class TextFormatter(logging.Formatter):
    """For a terminal: the usual line, then the bound fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={v}" for k, v in (_fields.get() or {}).items()]
        return f"{line} [{' '.join(fields)}]" if fields else line


def logging_config(fmt: LogFormat = "json", level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` schema; uvicorn applies it in each of its processes."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}, "probes": {"()": QuietProbes}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
                "timestamp": "time",  # ISO 8601, UTC
                "rename_fields": {"levelname": "level", "name": "logger"},
                # uvicorn repeats each message with terminal colours in `color_message`.
                "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
            },
            "text": {"()": TextFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": fmt,
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        # uvicorn's loggers have handlers of their own unless told otherwise.
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True, "filters": ["probes"]},
        },
    }


def configure(fmt: LogFormat = "json") -> dict[str, Any]:
    """Apply `logging_config(fmt)` to this process and return it (uvicorn takes it too)."""
    config = logging_config(fmt)
    logging.config.dictConfig(config)
    return config
