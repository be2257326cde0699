"""The history report: one self-contained HTML page (inline CSS and SVG, no script, no network).

Written for two readers: a charger owner asking "when was my charger dimmed, and by whom?", and
a grid operator or installer settling a dispute ("which limit was in force at 18:05, since when,
under which spec rule, and how fast did the charger react?"). So it shows the chart, the table of
limited periods, the writes the energy guard sent (with the answer each got), the bridge's own
events (restarts, lost heartbeats) and totals, and says in plain words what each total means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from eebus_bridge.activity import Activity
from eebus_bridge.history.chart import STATE_COLOURS, timeline_svg_of
from eebus_bridge.history.periods import LimitedPeriod, Timeline, derive_timeline

# What each rule ID in the period table means (spec/lpc.md, "States and transitions").
RULE_MEANINGS: dict[str, str] = {
    "start": "bridge started: the failsafe limit holds until the energy guard speaks (Init)",
    "new value": "the energy guard sent a new limit value while already limited",
    "LPC-904": "Init → Limited: an active limit received",
    "LPC-902/905": "Init → Unlimited/controlled: an inactive limit received",
    "LPC-906": "Init → Unlimited/autonomous: no energy guard within the Init timeout",
    "LPC-908/909": "Limited → Unlimited/controlled: limit deactivated or its duration expired",
    "LPC-910": "Unlimited/controlled → Limited: an active limit received",
    "LPC-911": "Limited → Failsafe: the energy guard's heartbeat was missing",
    "LPC-912": "Unlimited/controlled → Failsafe: the energy guard's heartbeat was missing",
    "LPC-916": "Failsafe → controlled: heartbeat back and a new limit received",
    "LPC-918..920": "Unlimited/autonomous → controlled: heartbeat present and a limit received",
    "LPC-921": "Failsafe → Unlimited/autonomous: heartbeat back, no new limit within the window",
    "LPC-922": "Failsafe → Unlimited/autonomous: the failsafe duration minimum elapsed",
}

_EVENT_KINDS = ("bridge", "sidecar", "connection", "eg")

_CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; color: #1f2937;
       margin: 24px auto; max-width: 1040px; padding: 0 16px; line-height: 1.4; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
.sub { color: #6b7280; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 14px; min-width: 150px;
        flex: 1; background: #f9fafb; }
.card .value { font-size: 22px; font-weight: bold; }
.card .label { color: #4b5563; font-size: 13px; }
.chart { border: 1px solid #e5e7eb; border-radius: 8px; padding: 6px; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e5e7eb;
         vertical-align: top; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
code.ski { word-break: break-all; display: inline-block; max-width: 22ch; }
.state { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px; }
.denied { color: #b91c1c; }
.note { color: #4b5563; font-size: 13px; }
dl.rules { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 13px; }
dl.rules dt { font-weight: bold; }
dl.rules dd { margin: 0; }
"""


def render_report(
    activities: Sequence[Activity],
    since: datetime,
    until: datetime,
    *,
    device: str = "",
    generated_at: datetime | None = None,
) -> str:
    """The HTML report for the window [since, until) from the records (context included)."""
    timeline = derive_timeline(activities, since, until)
    generated = generated_at if generated_at is not None else datetime.now(UTC)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>EEBUS LPC limits {_day(since)} to {_day(until)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Power limits {escape(('of ' + device) if device else '')}</h1>",
        f"<p class='sub'>{_when(since)} to {_when(until)} (all times UTC) · generated "
        f"{_when(generated)} by eebus-bridge</p>",
        "<p class='note'>A limit is the most power this charger may draw. The energy guard "
        "(the grid operator's control box or an energy manager) sets it over EEBUS "
        "(Limitation of Power Consumption, §14a EnWG); when the energy guard is not heard, the "
        "charger falls back to its failsafe limit. The figures below come from the bridge's "
        "own record of what it received and what it passed on to the charger.</p>",
        _cards(timeline),
        f"<div class='chart'>{timeline_svg_of(timeline, width=1000, height=300)}</div>",
        "<h2>Limited periods</h2>",
        _period_table(timeline.periods),
        "<h2>Totals</h2>",
        _totals_text(timeline),
        "<h2>Limits written by the energy guard</h2>",
        _writes_table(timeline.writes),
        "<h2>Bridge and connection events</h2>",
        _events_table(
            [a for a in activities if a.kind in _EVENT_KINDS and since <= a.time < until]
        ),
        "<h2>What the rules mean</h2>",
        _rules(timeline.periods),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso_text(text: str) -> str:
    """An ISO time from a record, shown like the others; left as is when it does not parse."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return _when(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def format_hours(hours: float) -> str:
    """'3 h 05 min', '12 min', '40 s': durations as people say them."""
    seconds = round(hours * 3600)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_watts(watts: float) -> str:
    return f"{watts / 1000:.2f} kW" if watts >= 1000 else f"{watts:g} W"


def _state_badge(state: str) -> str:
    colour = STATE_COLOURS.get(state, "#d1d5db")
    style = f"background:{colour}33;border:1px solid {colour}"
    return f"<span class='state' style='{style}'>{escape(state)}</span>"


def _ski(ski: object, *, short: bool = False) -> str:
    """The SKI; `short` keeps its first 8 and last 4 hex digits (the writes table has it all)."""
    if not ski:
        return "<span class='note'>— (failsafe limit)</span>"
    text = str(ski)
    if short and len(text) > 14:
        return f"<code title='{escape(text)}'>{escape(text[:8])}…{escape(text[-4:])}</code>"
    return f"<code class='ski'>{escape(text)}</code>"


def _cards(timeline: Timeline) -> str:
    totals = timeline.totals
    latency = (
        "—"
        if totals.latency_median_s is None or totals.latency_max_s is None
        else f"{totals.latency_median_s * 1000:.0f} / {totals.latency_max_s * 1000:.0f} ms"
    )
    cards = [
        (f"{totals.hours_limited:.2f} h", "limited (any limit in force)"),
        (f"{totals.energy_cap_kWh:.1f} kWh", "energy cap hours while limited"),
        (f"{totals.hours_failsafe:.2f} h", "in Failsafe"),
        (f"{totals.writes_approved} / {totals.writes_denied}", "writes approved / denied"),
        (latency, "reaction median / worst"),
    ]
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='value'>{escape(value)}</div>"
            f"<div class='label'>{escape(label)}</div></div>"
            for value, label in cards
        )
        + "</div>"
    )


def _period_table(periods: Sequence[LimitedPeriod]) -> str:
    if not periods:
        return "<p class='note'>No limit was in force in this period.</p>"
    rows = [
        "<table class='periods'><thead><tr><th>from</th><th>to</th><th>duration</th>"
        "<th>limit</th><th>energy cap</th><th>state</th><th>by energy guard (SKI)</th>"
        "<th>rule</th><th>reached the outputs</th></tr></thead><tbody>"
    ]
    for period in periods:
        to = "ongoing" if period.ongoing else _when(period.end)
        announced = (
            f"<br><span class='note'>announced end {escape(_iso_text(period.end_time))}</span>"
            if period.end_time
            else ""
        )
        rows.append(
            f"<tr><td class='time'>{_when(period.start)}</td><td class='time'>{to}{announced}</td>"
            f"<td class='num'>{format_hours(period.hours)}</td>"
            f"<td class='num'>{format_watts(period.limit_W)}</td>"
            f"<td class='num'>{period.energy_cap_kWh:.2f} kWh</td>"
            f"<td>{_state_badge(period.state)}</td>"
            f"<td>{_ski(period.ski, short=True)}</td>"
            f"<td>{escape(period.cause)}</td><td>{_deliveries(period)}</td></tr>"
        )
    rows.append(
        "</tbody></table><p class='note'>SKIs are shortened here; the table of writes below "
        "shows them in full. An output's time is from the publication to its first confirmed "
        "delivery.</p>"
    )
    return "".join(rows)


def _deliveries(period: LimitedPeriod) -> str:
    """'everest-api +12 ms' per output that confirmed the publication that began the period."""
    if not period.deliveries:
        return "<span class='note'>—</span>"
    return "<br>".join(
        f"{escape(sink)} <span class='note'>+{format_delay(seconds)}</span>"
        for sink, seconds in period.deliveries
    )


def format_delay(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else format_hours(seconds / 3600)


def _totals_text(timeline: Timeline) -> str:
    totals = timeline.totals
    window_h = (timeline.until - timeline.since).total_seconds() / 3600
    share = 100 * totals.hours_limited / window_h if window_h > 0 else 0.0
    return (
        "<table class='totals'><tbody>"
        f"<tr><td>Hours limited</td><td class='num'>{totals.hours_limited:.2f} h</td>"
        f"<td class='note'>{share:.1f} % of the {window_h:.1f} h shown: any limit in force "
        "(Limited, and the failsafe limit in Init and Failsafe)</td></tr>"
        f"<tr><td>… by the energy guard</td><td class='num'>{totals.hours_limited_by_eg:.2f} h"
        "</td><td class='note'>state Limited</td></tr>"
        f"<tr><td>… in Failsafe</td><td class='num'>{totals.hours_failsafe:.2f} h</td>"
        "<td class='note'>the energy guard was not heard; the failsafe limit applied</td></tr>"
        f"<tr><td>Energy cap hours</td><td class='num'>{totals.energy_cap_kWh:.2f} kWh</td>"
        "<td class='note'>the limit integrated over the limited time: the most energy the "
        "charger could have drawn while limited (an upper bound, not a meter reading)</td></tr>"
        f"<tr><td>Limited periods</td><td class='num'>{totals.periods}</td><td></td></tr>"
        f"<tr><td>Failed deliveries</td><td class='num'>{totals.delivery_failures}</td>"
        "<td class='note'>attempts to hand a limit to an output that failed (each output "
        "retries and then delivers the newest limit)</td></tr>"
        "</tbody></table>"
    )


def _writes_table(writes: Sequence[Activity]) -> str:
    if not writes:
        return "<p class='note'>No limit was written in this period.</p>"
    rows = [
        "<table class='writes'><thead><tr><th>received</th><th>energy guard (SKI)</th>"
        "<th>value</th><th>active</th><th>duration</th><th>answer</th></tr></thead><tbody>"
    ]
    for write in writes:
        fields = write.fields
        value = fields.get("value_W")
        shown = (
            format_watts(float(value))
            if isinstance(value, int | float) and math.isfinite(value) and value >= 0
            else escape(str(value))
        )
        duration = fields.get("duration_s")
        duration_text = (
            "no end"
            if not isinstance(duration, int | float) or duration == 0
            else format_hours(float(duration) / 3600)
        )
        answer = (
            "approved"
            if fields.get("approved")
            else f"<span class='denied'>denied: {escape(str(fields.get('reason')))}</span>"
        )
        rows.append(
            f"<tr><td class='time'>{_when(write.time)}</td>"
            f"<td>{_ski(fields.get('ski'))}</td>"
            f"<td class='num'>{shown}</td><td>{'yes' if fields.get('active') else 'no'}</td>"
            f"<td>{duration_text}</td><td>{answer}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _events_table(events: Sequence[Activity]) -> str:
    if not events:
        return "<p class='note'>No restarts or connection events in this period.</p>"
    rows = ["<table class='events'><thead><tr><th>time</th><th>what</th></tr></thead><tbody>"]
    for event in events:
        rows.append(
            f"<tr><td class='time'>{_when(event.time)}</td>"
            f"<td>{escape(describe_activity(event))}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def describe_activity(activity: Activity) -> str:
    """One line for people: 'sidecar restart delay_s=5 reason=exit status 1'."""
    details = activity_details(activity)
    return f"{activity.kind} {details}" if details else activity.kind


def activity_details(activity: Activity) -> str:
    """The fields as 'event key=value ...' (the event word first, unset fields left out)."""
    fields = dict(activity.fields)
    event = fields.pop("event", None)
    words = [] if event is None else [str(event)]
    if activity.kind == "publication" and fields.get("limit_W", 0) is None:
        fields["limit_W"] = "unlimited"
    words += [f"{key}={_short(value)}" for key, value in fields.items() if value not in (None, "")]
    return " ".join(words)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _rules(periods: Sequence[LimitedPeriod]) -> str:
    used = dict.fromkeys(p.cause for p in periods)
    shown = [key for key in RULE_MEANINGS if key in used] + [
        k for k in used if k not in RULE_MEANINGS
    ]
    items = "".join(
        f"<dt>{escape(key)}</dt><dd>{escape(RULE_MEANINGS.get(key, 'see spec/lpc.md'))}</dd>"
        for key in shown
    )
    return (
        f"<dl class='rules'>{items}</dl>" if items else "<p class='note'>No rules applied.</p>"
    ) + (
        "<p class='note'>Rule IDs are those of the EEBUS LPC specification (Limitation of Power "
        "Consumption, used for §14a EnWG). A limit counts from the moment the bridge published "
        "it to EVerest.</p>"
    )
