"""The LPC limit as EVerest's ExternalLimits object (spec/everest.md), exactly as EVerest's own
C++ EEBUS module sends it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

SOURCE: Final = "EEBUS LPC"


def format_timestamp(dt: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a literal Z, e.g. "2026-05-07T10:00:00.000Z".

    EVerest reads any UTC offset as UTC, so aware datetimes are converted and only Z is
    emitted; naive ones are ambiguous and rejected. Milliseconds are truncated, not rounded.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime has no time zone: {dt.isoformat()}")
    utc = dt.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _limits(limit_W: float | None) -> dict[str, Any]:
    if limit_W is None:
        return {}
    return {"total_power_W": {"value": limit_W, "source": SOURCE}}


def _entry(at: datetime, limit_W: float | None) -> dict[str, Any]:
    return {
        "timestamp": format_timestamp(at),
        "limits_to_root": _limits(limit_W),
        "limits_to_leaves": _limits(limit_W),
    }


def to_external_limits(
    limit_W: float | None, end: datetime | None, now: datetime
) -> dict[str, Any]:
    """ExternalLimits for a limit in force now (None = unlimited) ending at end (None = never).

    Init and Failsafe are passed as their FCAPL without end. A timed limit gets a second
    entry at its end with empty limits, because nothing in EVerest expires by itself.
    """
    if limit_W is not None and not (math.isfinite(limit_W) and limit_W >= 0):
        raise ValueError(f"limit must be finite and >= 0 W: {limit_W!r}")
    schedule = [_entry(now, limit_W)]
    if limit_W is not None and end is not None:
        schedule.append(_entry(end, None))
    return {"schedule_import": schedule, "schedule_export": [], "schedule_setpoints": []}
