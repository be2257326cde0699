"""`eebus-bridge history` and `report`: time windows from the command line, and the listings.

Times: `--since` / `--until` take a span back from now ("90s", "30m", "24h", "7d", "2w"),
"now", or an ISO 8601 date or date-time; one without a zone counts as UTC, like everything the
bridge stores. Output times are UTC with milliseconds, so listings compare across machines.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from eebus_bridge.activity import Activity
from eebus_bridge.history.report import activity_details

# --kind choices -> the activity kinds they list (None = every kind).
KIND_GROUPS: dict[str, tuple[str, ...] | None] = {
    "writes": ("write", "failsafe_write"),
    "states": ("state",),
    "publications": ("publication", "delivery"),
    "events": ("bridge", "sidecar", "connection", "eg", "discovery", "sink"),
    "all": None,
}
FORMATS = ("table", "csv", "json")

_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TimeArgumentError(ValueError):
    """A --since/--until value that is neither a span, "now", nor an ISO date(-time)."""


def parse_moment(text: str, now: datetime) -> datetime:
    """'24h' -> now - 24 h; '2026-11-20' -> that midnight UTC; ISO with offset kept (as UTC)."""
    value = text.strip()
    if value.lower() == "now":
        return now
    span = _SPAN.fullmatch(value.lower())
    if span is not None:
        return now - timedelta(seconds=float(span.group(1)) * _UNIT_SECONDS[span.group(2)])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeArgumentError(
            f"{text!r} is not a time: use a span back from now (90s, 30m, 24h, 7d, 2w), "
            "'now', or an ISO date or date-time such as 2026-11-20 or 2026-11-20T18:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """2026-11-23T06:00:00.000Z"""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def activity_to_json(activity: Activity) -> dict[str, Any]:
    """The JSON shape of one record in listings: time (UTC, ms, 'Z'), kind, fields."""
    return {"time": format_time(activity.time), "kind": activity.kind, "fields": activity.fields}


def format_activities(activities: Sequence[Activity], output_format: str) -> str:
    if output_format == "json":
        return json.dumps([activity_to_json(a) for a in activities], indent=1, default=str) + "\n"
    if output_format == "csv":
        return _csv(activities)
    return _table(activities)


def _table(activities: Sequence[Activity]) -> str:
    if not activities:
        return ""
    width = max(len(a.kind) for a in activities)
    return "".join(
        f"{format_time(a.time)}  {a.kind:<{width}}  {activity_details(a)}".rstrip() + "\n"
        for a in activities
    )


def _csv(activities: Sequence[Activity]) -> str:
    """One column per field name (first seen first), so `--kind writes` is a plain sheet."""
    columns = list(dict.fromkeys(key for a in activities for key in a.fields))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["time", "kind", *columns])
    for activity in activities:
        writer.writerow(
            [
                format_time(activity.time),
                activity.kind,
                *(_csv_cell(activity.fields.get(column)) for column in columns),
            ]
        )
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
