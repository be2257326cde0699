"""The durable history of everything the bridge did, and what is made from it.

`HistoryStore` writes the activity feed to one SQLite file; `read_history` reads it back;
`derive_timeline` turns records into states, limits, limited periods and totals; `timeline_svg`
draws the limit-over-time chart; `render_report` makes the self-contained HTML report;
`activity_to_json` is the JSON shape of one record (CLI listings, the status API).
"""

from eebus_bridge.history.chart import timeline_svg, timeline_svg_of
from eebus_bridge.history.listing import activity_to_json
from eebus_bridge.history.periods import (
    LimitedPeriod,
    LimitSpan,
    StateSpan,
    Timeline,
    Totals,
    derive_timeline,
)
from eebus_bridge.history.report import render_report
from eebus_bridge.history.store import HistoryFileError, HistoryStore, read_history

__all__ = [
    "HistoryFileError",
    "HistoryStore",
    "LimitSpan",
    "LimitedPeriod",
    "StateSpan",
    "Timeline",
    "Totals",
    "activity_to_json",
    "derive_timeline",
    "read_history",
    "render_report",
    "timeline_svg",
    "timeline_svg_of",
]
