"""Logging for a bridge that runs unattended for years: one line per event, to stderr.

Text lines are for people reading a terminal or journald; JSON lines are for log collectors.
Structured details travel as `logger.info("...", extra={"fields": {...}})`: JSON output merges
them into the object, text output appends them as `key=value`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LEVELS = ("debug", "info", "warning", "error")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when the record arrives (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging must never take the bridge down
            self.handleError(record)


class _TextFormatter(logging.Formatter):
    def __init__(
        self, fmt: str = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
    ) -> None:
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # keep fields on the message's line
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return f"{first} {pairs}{newline}{rest}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)  # the fixed keys win, so collectors can rely on them
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(char.isspace() for char in value):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def message_formatter() -> logging.Formatter:
    """Text lines without time and level, for a log that adds its own (EVerest's)."""
    return _TextFormatter("%(name)s: %(message)s")


def setup_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Send the root logger to stderr at `level`. Calling it again replaces, never adds."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
