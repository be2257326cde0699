"""Log output in the real sidecar's line format.

The bridge forwards the sidecar's stdout into its own log and parses the level out of each
line, so the simulator writes exactly that shape (`YYYY-MM-DD HH:MM:SS LEVEL message`) and,
like the real binary, a few raw lines without it. In-process, the same lines go to Python
logging instead of stdout.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

LEVELS: dict[str, int] = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40, "FATAL": 50}
_PYTHON_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
}


def parse_level(name: str) -> str:
    """Accept the usual spellings (warning, Info, ...); raise ValueError for anything else."""
    upper = name.strip().upper()
    if upper == "WARNING":
        upper = "WARN"
    if upper not in LEVELS:
        raise ValueError(f"unknown log level {name!r} (use one of {', '.join(LEVELS)})")
    return upper


class SimLog:
    """Where the simulator's log lines go. Base class: Python logging (in-process use)."""

    def __init__(self, threshold: str = "DEBUG") -> None:
        self.threshold = LEVELS[parse_level(threshold)]
        self._logger = logging.getLogger("tools.hems_simulator")

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def log(self, level: str, message: str) -> None:
        if self.enabled(level):
            self._emit(level, message)

    def _emit(self, level: str, message: str) -> None:
        self._logger.log(_PYTHON_LEVELS[level], "%s", message)

    def raw(self, text: str) -> None:
        """A line without timestamp and level (the real sidecar prints some via fmt.Printf)."""
        self._logger.info("%s", text)

    def debug(self, message: str) -> None:
        self.log("DEBUG", message)

    def info(self, message: str) -> None:
        self.log("INFO", message)

    def warn(self, message: str) -> None:
        self.log("WARN", message)

    def error(self, message: str) -> None:
        self.log("ERROR", message)


class StdoutLog(SimLog):
    """Sidecar-shaped lines on a text stream, flushed per line so a supervisor sees them live."""

    def __init__(self, threshold: str = "DEBUG", stream: TextIO | None = None) -> None:
        super().__init__(threshold)
        self._stream = stream if stream is not None else sys.stdout

    def _emit(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._write(f"{stamp} {level} {message}\n")

    def raw(self, text: str) -> None:
        self._write(text + "\n")

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line)
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            # A supervisor that stopped reading must not take the simulator down with it.
            pass
