"""Crash-safe storage of the failsafe values the EG wrote [LPC-TS-044].

The test case ATC_COM_PT_CSInit_003 reboots the CS and expects the EG's failsafe limit and
duration back, so accepted values go to `[lpc] state_file`: written to a temp file in the same
folder, fsynced, renamed over the old file, and the folder fsynced. A reader therefore sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from eebus_bridge.lpc import FailsafeValues

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def load_failsafe_values(path: Path) -> FailsafeValues | None:
    """The stored values, or None (with a warning) when the file is missing or unusable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("no stored failsafe values at %s: using the configured ones", path)
        return None
    except OSError as exc:
        log.warning("cannot read %s (%s): using the configured failsafe values", path, exc)
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"expected an object with version {FORMAT_VERSION}")
        limit = data["failsafe_limit_W"]
        duration = data["failsafe_duration_s"]
        for name, value in (("failsafe_limit_W", limit), ("failsafe_duration_s", duration)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
    except (ValueError, KeyError) as exc:
        log.warning("%s is corrupt (%s): using the configured failsafe values", path, exc)
        return None
    return FailsafeValues(limit_W=float(limit), duration_s=float(duration))


def save_failsafe_values(path: Path, values: FailsafeValues) -> None:
    """Atomically replace path with values (blocking: call from a worker thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": FORMAT_VERSION,
        "failsafe_limit_W": values.limit_W,
        "failsafe_duration_s": values.duration_s,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
