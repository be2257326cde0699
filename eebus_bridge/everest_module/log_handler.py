"""Our log records, the sidecar's lines included, into EVerest's log through everestpy.

Inside EVerest a module's log belongs in EVerest's log (one place, one format, filtered by
EVerest's log config), so the module sends every record to everestpy's `log` functions
instead of stderr. Levels map one to one; EVerest adds time and severity itself, so the line
carries the logger name and message (plus structured fields as key=value).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from eebus_bridge.logs import message_formatter


class EverestLog(Protocol):
    """The part of everestpy's `log` the module uses."""

    def debug(self, message: str, /) -> None: ...
    def info(self, message: str, /) -> None: ...
    def warning(self, message: str, /) -> None: ...
    def error(self, message: str, /) -> None: ...
    def critical(self, message: str, /) -> None: ...


class EverestLogHandler(logging.Handler):
    def __init__(self, everest_log: EverestLog) -> None:
        super().__init__()
        self.setFormatter(message_formatter())
        self._everest_log = everest_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._function(record.levelno)(self.format(record))
        except Exception:  # logging must never take the module down
            self.handleError(record)

    def _function(self, level: int) -> Callable[[str], None]:
        if level >= logging.CRITICAL:
            return self._everest_log.critical
        if level >= logging.ERROR:
            return self._everest_log.error
        if level >= logging.WARNING:
            return self._everest_log.warning
        if level >= logging.INFO:
            return self._everest_log.info
        return self._everest_log.debug


def log_to_everest(everest_log: EverestLog, level: str) -> None:
    """Make everestpy's log the root logger's only handler, at `level` ("debug".."error")."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(EverestLogHandler(everest_log))
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings too, instead of the module's bare stderr
