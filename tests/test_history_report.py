"""Periods, totals, the report page and the chart, from one known set of records.

The day (UTC): Init at start, an inactive write, a 2 h limit of 4200 W that expires, a denied
write, 6000 W then 3000 W, a lost heartbeat (Failsafe 62 min), recovery, a bridge restart, and
2000 W still in force at the end of the window.
"""

from __future__ import annotations

import itertools
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from eebus_bridge.activity import Activity
from eebus_bridge.history import derive_timeline, timeline_svg
from eebus_bridge.history.report import render_report

T0 = datetime(2026, 11, 23, tzinfo=UTC)
UNTIL = T0 + timedelta(hours=14)
SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"
SVG = "{http://www.w3.org/2000/svg}"


def at(hours: float, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


def write(when: datetime, value: float, *, active: bool = True, approved: bool = True) -> Activity:
    return Activity(
        "write",
        when,
        {
            "ski": SKI,
            "msg_counter": 1,
            "value_W": value,
            "active": active,
            "duration_s": None,
            "approved": approved,
            "reason": "" if approved else "LPC-001: Active Power Consumption Limit must be >= 0 W",
        },
    )


def state(when: datetime, old: str, new: str, rule: str) -> Activity:
    return Activity("state", when, {"old": old, "new": new, "rule": rule})


_VERSIONS = itertools.count(1)


def publication(
    when: datetime, in_state: str, limit_W: float | None, end: datetime | None = None
) -> Activity:
    return Activity(
        "publication",
        when,
        {
            "version": next(_VERSIONS),
            "state": in_state,
            "limit_W": limit_W,
            "end_time": None if end is None else end.isoformat(),
            "latency_s": 0.004 if in_state == "Limited" else None,
        },
    )


def delivery(when: datetime, sink: str, version: int, *, ok: bool) -> Activity:
    error = None if ok else "Broken pipe"
    return Activity("delivery", when, {"sink": sink, "version": version, "ok": ok, "error": error})


def bridge(when: datetime, event: str) -> Activity:
    return Activity("bridge", when, {"event": event})


DAY = [
    bridge(at(0), "start"),
    publication(at(0), "Init", 4200.0),
    write(at(0, 1), 11000.0, active=False),
    state(at(0, 1), "Init", "Unlimited/controlled", "LPC-902/905"),
    publication(at(0, 1), "Unlimited/controlled", None),
    write(at(2), 4200.0),
    state(at(2), "Unlimited/controlled", "Limited", "LPC-910"),
    publication(at(2), "Limited", 4200.0, end=at(4)),  # version 3
    delivery(at(2) + timedelta(milliseconds=12), "everest-api", 3, ok=True),
    delivery(at(2) + timedelta(milliseconds=20), "jsonl", 3, ok=False),
    delivery(at(2) + timedelta(milliseconds=1500), "jsonl", 3, ok=True),
    delivery(at(2) + timedelta(milliseconds=1600), "everest-api", 3, ok=True),  # a re-delivery
    state(at(4), "Limited", "Unlimited/controlled", "LPC-908/909"),
    publication(at(4), "Unlimited/controlled", None),
    write(at(5), -5.0, approved=False),
    write(at(6), 6000.0),
    state(at(6), "Unlimited/controlled", "Limited", "LPC-910"),
    publication(at(6), "Limited", 6000.0),
    write(at(7), 3000.0),
    publication(at(7), "Limited", 3000.0),
    Activity("eg", at(8), {"event": "heartbeat_lost", "ski": SKI}),
    state(at(8), "Limited", "Failsafe", "LPC-911"),
    publication(at(8), "Failsafe", 4200.0),
    Activity("eg", at(9), {"event": "heartbeat_back", "ski": SKI}),
    state(at(9, 2), "Failsafe", "Unlimited/autonomous", "LPC-921"),
    publication(at(9, 2), "Unlimited/autonomous", None),
    bridge(at(10), "stop"),
    bridge(at(11), "start"),
    publication(at(11), "Init", 4200.0),
    state(at(11, 30), "Init", "Unlimited/autonomous", "LPC-906"),
    publication(at(11, 30), "Unlimited/autonomous", None),
    write(at(12), 2000.0),
    state(at(12), "Unlimited/autonomous", "Limited", "LPC-918..920"),
    publication(at(12), "Limited", 2000.0),
]


def test_periods_say_when_how_much_by_whom_and_why() -> None:
    timeline = derive_timeline(DAY, T0, UNTIL)
    rows = [
        (p.start, p.end, p.limit_W, p.state, p.ski, p.cause, p.ongoing) for p in timeline.periods
    ]
    assert rows == [
        (at(0), at(0, 1), 4200.0, "Init", None, "start", False),
        (at(2), at(4), 4200.0, "Limited", SKI, "LPC-910", False),
        (at(6), at(7), 6000.0, "Limited", SKI, "LPC-910", False),
        (at(7), at(8), 3000.0, "Limited", SKI, "new value", False),
        (at(8), at(9, 2), 4200.0, "Failsafe", None, "LPC-911", False),
        (at(11), at(11, 30), 4200.0, "Init", None, "start", False),
        (at(12), UNTIL, 2000.0, "Limited", SKI, "LPC-918..920", True),
    ]
    assert timeline.periods[1].end_time == at(4).isoformat()
    assert timeline.periods[1].deliveries == (("everest-api", 0.012), ("jsonl", 1.5))
    assert timeline.periods[2].deliveries == ()


def test_totals_hours_and_energy_cap() -> None:
    totals = derive_timeline(DAY, T0, UNTIL).totals
    assert totals.hours_limited == pytest.approx(1 / 60 + 2 + 1 + 1 + 62 / 60 + 0.5 + 2)
    assert totals.hours_limited_by_eg == pytest.approx(6.0)
    assert totals.hours_failsafe == pytest.approx(62 / 60)
    # 4.2 kW * 1 min + 4.2 * 2 h + 6 * 1 h + 3 * 1 h + 4.2 * 62 min + 4.2 * 0.5 h + 2 * 2 h
    assert totals.energy_cap_kWh == pytest.approx(0.07 + 8.4 + 6 + 3 + 4.34 + 2.1 + 4)
    assert (totals.periods, totals.writes_approved, totals.writes_denied) == (7, 5, 1)
    assert totals.delivery_failures == 1
    assert totals.latency_median_s == pytest.approx(0.004)


def test_nothing_is_known_while_the_bridge_is_stopped() -> None:
    timeline = derive_timeline(DAY, T0, UNTIL)
    covered = [(s.start, s.end) for s in timeline.states]
    assert (at(9, 2), at(10)) in covered  # autonomous until the stop
    assert not any(s.start < at(11) and s.end > at(10) for s in timeline.states)


def test_a_start_without_stop_ends_what_was_in_force() -> None:
    crashed = [r for r in DAY if not (r.kind == "bridge" and r.fields["event"] == "stop")]
    timeline = derive_timeline(crashed, T0, UNTIL)
    assert (at(9, 2), at(11)) in [(s.start, s.end) for s in timeline.states]


def test_a_window_starts_with_what_was_in_force_before_it() -> None:
    timeline = derive_timeline(DAY, at(7, 30), at(8, 30))
    assert [(p.start, p.end, p.limit_W, p.cause) for p in timeline.periods] == [
        (at(7, 30), at(8), 3000.0, "new value"),
        (at(8), at(8, 30), 4200.0, "LPC-911"),
    ]
    assert timeline.totals.energy_cap_kWh == pytest.approx(1.5 + 2.1)
    assert timeline.writes == ()


class _Tables(HTMLParser):
    """The text of every cell of every <table>, by the table's class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _report_tables(html: str) -> _Tables:
    parser = _Tables()
    parser.feed(html)
    return parser


def test_report_tables_hold_the_periods_and_totals() -> None:
    html = render_report(DAY, T0, UNTIL, device="Acme Wallbox, serial 7")
    tables = _report_tables(html)
    periods = tables.tables["periods"]
    assert periods[0] == [
        "from",
        "to",
        "duration",
        "limit",
        "energy cap",
        "state",
        "by energy guard (SKI)",
        "rule",
        "reached the outputs",
    ]
    assert periods[1] == [
        "2026-11-23 00:00:00",
        "2026-11-23 00:01:00",
        "1 min",
        "4.20 kW",
        "0.07 kWh",
        "Init",
        "— (failsafe limit)",
        "start",
        "—",
    ]
    assert periods[2] == [
        "2026-11-23 02:00:00",
        "2026-11-23 04:00:00 announced end 2026-11-23 04:00:00",
        "2 h 00 min",
        "4.20 kW",
        "8.40 kWh",
        "Limited",
        "5e1d6a3c…f001",
        "LPC-910",
        "everest-api +12 ms jsonl +1500 ms",
    ]
    assert periods[5][:4] == ["2026-11-23 08:00:00", "2026-11-23 09:02:00", "1 h 02 min", "4.20 kW"]
    assert periods[-1][1] == "ongoing"
    totals = {row[0]: row[1] for row in tables.tables["totals"]}
    assert totals["Hours limited"] == "7.55 h"
    assert totals["Energy cap hours"] == "27.91 kWh"
    assert totals["… in Failsafe"] == "1.03 h"
    assert totals["Failed deliveries"] == "1"
    writes = tables.tables["writes"]
    assert len(writes) == 1 + 6
    assert writes[3][-1] == "denied: LPC-001: Active Power Consumption Limit must be >= 0 W"
    events = [row[1] for row in tables.tables["events"][1:]]
    assert events[:2] == ["bridge start", f"eg heartbeat_lost ski={SKI}"]
    assert "Acme Wallbox, serial 7" in html
    assert "the most energy the charger could have drawn while limited" in html


def test_report_is_self_contained() -> None:
    html = render_report(DAY, T0, UNTIL)
    tags = set(_report_tables(html).tags)
    assert not tags & {"script", "link", "img", "iframe", "object"}
    for needle in ("src=", "href=", "@import", "url(http", "https://"):
        assert needle not in html
    assert "<svg" in html


def _svg(activities: list[Activity], since: datetime, until: datetime) -> ET.Element:
    return ET.fromstring(timeline_svg(activities, since, until))


def _by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if cls in (e.get("class") or "").split()]


def test_chart_draws_the_step_line_bands_markers_axis_and_legend() -> None:
    root = _svg(DAY, T0, UNTIL)
    assert root.tag == f"{SVG}svg"
    (limit,) = _by_class(root, "path", "limit")
    # One level per distinct limit in force (4200, 6000, 3000, 2000 W, and unlimited on top).
    levels = {float(step.split("H")[0]) for step in limit.get("d", "").split("V")[1:]}
    assert len(levels) == 5
    assert len(_by_class(root, "rect", "failsafe")) == 1
    assert len(_by_class(root, "path", "approved")) == 5
    assert len(_by_class(root, "path", "denied")) == 1
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for label in ("00:00", "06:00", "12:00", "2026-11-23", "time (UTC)", "6 kW"):
        assert label in texts
    for legend in ("limit in force", "write approved", "write denied", "Failsafe", "Limited"):
        assert legend in texts
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    assert any("denied: LPC-001" in t for t in titles)


def test_chart_without_records_says_so() -> None:
    root = _svg([], T0, UNTIL)
    assert "no limit recorded in this period" in [t.text for t in root.iter(f"{SVG}text")]


@pytest.fixture
def new_york_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_chart_and_report_do_not_depend_on_the_local_time_zone(new_york_time: Any) -> None:
    in_new_york = timeline_svg(DAY, T0, UNTIL), render_report(DAY, T0, UNTIL, generated_at=T0)
    assert "00:00" in [t.text for t in ET.fromstring(in_new_york[0]).iter(f"{SVG}text")]
    assert "2026-11-23 00:00:00" in in_new_york[1]


def test_a_window_while_the_bridge_was_stopped_shows_no_limit() -> None:
    """With context, the stop before the window ends the limit published before it."""
    stopped = [publication(at(1), "Limited", 3000.0), bridge(at(2), "stop")]
    timeline = derive_timeline(stopped, at(3), at(4))
    assert (timeline.periods, timeline.states) == ((), ())


def _bottom_row_extents(root: ET.Element) -> list[tuple[float, float, str]]:
    """(left, right, text) of the texts in the row under the hour labels (dates, axis label),
    with widths estimated at 0.6 em per character."""
    texts = [t for t in root.iter(f"{SVG}text") if t.get("font-size") == "11" and t.text]
    row_y = max(float(t.get("y", "0")) for t in texts)
    extents = []
    for t in texts:
        if float(t.get("y", "0")) != row_y:
            continue
        x, width = float(t.get("x", "0")), 0.6 * 11 * len(t.text or "")
        anchor = t.get("text-anchor")
        left = x - width if anchor == "end" else x - width / 2 if anchor == "middle" else x
        extents.append((left, left + width, t.text or ""))
    return sorted(extents)


def test_a_day_that_begins_at_the_right_end_does_not_overwrite_the_axis_label() -> None:
    """The status page's 24 h window just after midnight: the new day's date is shown, and
    no two labels of the row under the hours overlap."""
    until = datetime(2026, 11, 30, 0, 10, tzinfo=UTC)
    root = _svg(DAY, until - timedelta(hours=24), until)
    extents = _bottom_row_extents(root)
    for (_, right, text), (left, _, following) in itertools.pairwise(extents):
        assert right <= left, f"{text!r} overlaps {following!r}"
    assert any("2026-11-30" in text for _, _, text in extents)
    assert any("time (UTC)" in text for _, _, text in extents)
