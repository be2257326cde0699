"""Publications built by hand, with ExternalLimits objects written out as spec/everest.md
shows them (independent of the bridge's own translation code, which has its own tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from eebus_bridge.publication import Publication

NOW = datetime(2026, 5, 7, 10, 0, 0, 123456, tzinfo=UTC)
NOW_TEXT = "2026-05-07T10:00:00.123Z"
SOURCE = "EEBUS LPC"


def power_limits(value: float) -> dict[str, Any]:
    return {"total_power_W": {"value": value, "source": SOURCE}}


def external_limits(*entries: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "schedule_import": [
            {"timestamp": at, "limits_to_root": limits, "limits_to_leaves": dict(limits)}
            for at, limits in entries
        ],
        "schedule_export": [],
        "schedule_setpoints": [],
    }


def limited(value: float = 4200.0, *, at: datetime = NOW) -> Publication:
    """Limited, no duration: one entry at now with total_power_W on both sides."""
    return Publication(
        time=at,
        state="Limited",
        limit_W=value,
        end_time=None,
        external_limits=external_limits((NOW_TEXT, power_limits(value))),
    )


def limited_for(value: float, duration: timedelta) -> Publication:
    """Limited with a duration: that entry plus an empty one at now + duration."""
    end = NOW + duration
    end_text = f"{end:%Y-%m-%dT%H:%M:%S}.{end.microsecond // 1000:03d}Z"
    return Publication(
        time=NOW,
        state="Limited",
        limit_W=value,
        end_time=end,
        external_limits=external_limits((NOW_TEXT, power_limits(value)), (end_text, {})),
    )


def unlimited(state: str = "Unlimited/controlled") -> Publication:
    """No limit: one entry at now with empty limits on both sides."""
    return Publication(
        time=NOW,
        state=state,
        limit_W=None,
        end_time=None,
        external_limits=external_limits((NOW_TEXT, {})),
    )


def failsafe(fcapl: float = 4200.0, state: str = "Failsafe") -> Publication:
    """Init / Failsafe: like an active limit of FCAPL without duration."""
    return Publication(
        time=NOW,
        state=state,
        limit_W=fcapl,
        end_time=None,
        external_limits=external_limits((NOW_TEXT, power_limits(fcapl))),
    )
