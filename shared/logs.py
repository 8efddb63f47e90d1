"""Logging for both sides: one JSON object a line, carrying the request and job ids in scope;
for a person at a terminal, `pretty`: short coloured lines, one per request.

`bind(request_id=..., job_id=...)` adds fields to every record logged from the current context
(an HTTP request's task on the API, the running job on the worker); `log_context` does the
same for a block and undoes it after.
"""

import logging
import logging.config
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS

LogFormat = Literal["json", "text", "pretty"]
# What settings and flags take: `auto` is `pretty` when the log goes to a terminal, else `json`.
LogChoice = Literal["auto", "json", "text", "pretty"]

# The loggers of the one line an API request ends with, and of a worker's job lines.
REQUESTS_LOGGER = "tokenq.requests"
JOBS_LOGGER = "tokenq.jobs"


def resolve(choice: LogChoice, stream: TextIO) -> LogFormat:
    """The format for `choice` when logging to `stream`: the one place a terminal is detected."""
    if choice != "auto":
        return choice
    return "pretty" if stream.isatty() else "json"


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


_RESET = "\033[0m"
_DIM = "\033[2m"
_BOLD = "\033[1m"
_LEVEL_COLOURS = {"WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m"}


def _status_colour(status: int) -> str:
    if status < 400:
        return "\033[32m"  # green
    if status < 500:
        return "\033[33m"  # yellow (499: the client went away)
    return "\033[31m"  # red


class PrettyFormatter(logging.Formatter):
    """For a person at a terminal: `12:01:02 200 openai smollm2 12+48 tokens 0.84s (first
    token 0.06s)` for each request, `12:01:02 WARNING name: message` for the rest; coloured
    unless NO_COLOR is set (the output usually reaches the terminal through `tokenq up`)."""

    def __init__(self) -> None:
        super().__init__()
        self.colour = not os.environ.get("NO_COLOR")

    def _paint(self, colour: str, text: str) -> str:
        return f"{colour}{text}{_RESET}" if self.colour else text

    def format(self, record: logging.LogRecord) -> str:
        clock = self._paint(_DIM, time.strftime("%H:%M:%S", time.localtime(record.created)))
        if record.name == REQUESTS_LOGGER and isinstance(getattr(record, "status", None), int):
            return f"{clock} {self._request(record)}"
        level = record.levelname
        if level in _LEVEL_COLOURS:
            level = self._paint(_LEVEL_COLOURS[level], level)
        line = f"{clock} {level} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def _request(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        status: int = fields["status"]
        parts = [
            self._paint(_BOLD + _status_colour(status), str(status)),
            str(fields.get("flavour", "")),
            fields.get("model") or "-",
        ]
        if "completion_tokens" in fields:
            parts.append(f"{fields.get('prompt_tokens', 0)}+{fields['completion_tokens']} tokens")
        duration = f"{fields.get('duration_s', 0):.2f}s"
        if "ttft_s" in fields:
            duration += self._paint(_DIM, f" (first token {fields['ttft_s']:.2f}s)")
        parts.append(duration)
        for name in ("finish_reason", "rejection"):
            if name in fields and fields[name] != "stop":
                parts.append(self._paint(_DIM, str(fields[name])))
        return " ".join(parts)


class PrettyQuiet(logging.Filter):
    """For `pretty`: the request's own line replaces uvicorn's access line, and the API's line
    the worker's routine job lines (their warnings and errors still show)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access":
            return False
        return not (record.name == JOBS_LOGGER and record.levelno <= logging.INFO)


def logging_config(fmt: LogFormat = "json", level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` schema; uvicorn applies it in each of its processes."""
    filters = ["context", "pretty"] if fmt == "pretty" else ["context"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": ContextFilter},
            "probes": {"()": QuietProbes},
            "pretty": {"()": PrettyQuiet},
        },
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
            "pretty": {"()": PrettyFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": fmt,
                "filters": filters,
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


def configure(choice: LogChoice = "json", stream: TextIO | None = None) -> dict[str, Any]:
    """Apply `logging_config` for `choice` (on stderr, or `stream` for `auto`) to this process
    and return it (uvicorn takes it too)."""
    config = logging_config(resolve(choice, stream or sys.stderr))
    logging.config.dictConfig(config)
    return config
