"""The limit-over-time chart as a self-contained SVG (no script, no fonts, no network).

Chargers are often offline, so the chart is plain SVG text made here: the limit in force as a
step line, the LPC states as coloured bands, Failsafe hatched and outlined, the energy guard's
writes as markers (approved: filled triangle at the written value; denied: a red cross), the
time axis in UTC (the same picture wherever it is rendered) and a legend. Every band and marker
carries a <title>, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape

from eebus_bridge.activity import Activity
from eebus_bridge.history.periods import Timeline, derive_timeline

STATE_COLOURS: dict[str, str] = {
    "Init": "#9ca3af",
    "Limited": "#f59e0b",
    "Unlimited/controlled": "#22c55e",
    "Unlimited/autonomous": "#38bdf8",
    "Failsafe": "#ef4444",
}
LIMIT_COLOUR = "#1e3a8a"
APPROVED_COLOUR = "#7c3aed"
DENIED_COLOUR = "#dc2626"
_TEXT = "#1f2937"
_GRID = "#e5e7eb"
_FONT = "font-family='DejaVu Sans, Arial, Helvetica, sans-serif'"

# Tick steps for the time axis, in seconds; the first that gives few enough labels wins.
_TIME_STEPS = (
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800,
    3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEFT_MARGIN = 64  # room for the watt labels
_UNLIMITED_Y = 6  # below the plot's top edge: where "no limit" is drawn
_UNLIMITED_GAP = 22  # plot height above the highest watt tick
_XScale = Callable[[datetime], float]
_YScale = Callable[[float], float]


def timeline_svg(
    activities: Sequence[Activity],
    since: datetime,
    until: datetime,
    *,
    width: int = 960,
    height: int = 280,
) -> str:
    """The chart of `activities` between `since` and `until` (UTC) as SVG text."""
    return timeline_svg_of(derive_timeline(activities, since, until), width=width, height=height)


def timeline_svg_of(timeline: Timeline, *, width: int = 960, height: int = 280) -> str:
    """The chart of an already derived timeline (the report derives it once for everything)."""
    since, until = timeline.since, timeline.until
    left, right, bottom = LEFT_MARGIN, 28, 40
    legend, legend_h = _legend(width, left)
    top = legend_h + 14
    plot_w = max(width - left - right, 10)
    plot_h = max(height - top - bottom, 10)
    span_s = max((until - since).total_seconds(), 1e-3)

    def x(moment: datetime) -> float:
        return left + (moment - since).total_seconds() / span_s * plot_w

    # The scale follows the limits and the active writes; an inactive write means "no limit"
    # and sits on the top line with the unlimited periods.
    values = [s.limit_W for s in timeline.limits if s.limit_W is not None]
    values += [
        float(w.fields["value_W"])
        for w in timeline.writes
        if w.fields.get("active", True)
        and isinstance(w.fields.get("value_W"), int | float)
        and math.isfinite(w.fields["value_W"])
    ]
    y_max, y_step = _nice_scale(max(values, default=0.0))

    # The top strip of the plot is "no limit", above the highest watt tick.
    scale_h = max(plot_h - _UNLIMITED_GAP, 1)

    def y(watts: float) -> float:
        if watts > y_max:
            return float(top + _UNLIMITED_Y)
        return top + plot_h - max(watts, 0.0) / y_max * scale_h

    out: list[str] = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {_FONT} font-size='12' role='img' "
        f"aria-label='limit in force from {_iso(since)} to {_iso(until)}'>",
        "<defs><pattern id='failsafe-hatch' width='8' height='8' patternUnits='userSpaceOnUse' "
        "patternTransform='rotate(45)'><rect width='8' height='8' fill='#fecaca'/>"
        f"<line x1='0' y1='0' x2='0' y2='8' stroke='{STATE_COLOURS['Failsafe']}' "
        "stroke-width='3'/></pattern></defs>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>",
    ]
    # State bands behind everything; Failsafe hatched with a red frame so it stands out.
    for band in timeline.states:
        x0, x1 = x(band.start), x(band.end)
        if band.state == "Failsafe" and x1 - x0 < 4:  # minutes in a week: keep it visible
            x0, x1 = (x0 + x1) / 2 - 2, (x0 + x1) / 2 + 2
        colour = STATE_COLOURS.get(band.state, "#d1d5db")
        title = f"<title>{escape(band.state)}: {_iso(band.start)} to {_iso(band.end)}</title>"
        if band.state == "Failsafe":
            out.append(
                f"<rect class='band failsafe' x='{x0:.1f}' y='{top}' width='{x1 - x0:.1f}' "
                f"height='{plot_h}' fill='url(#failsafe-hatch)' fill-opacity='0.55' "
                f"stroke='{colour}' stroke-width='1.5'>{title}</rect>"
            )
        else:
            out.append(
                f"<rect class='band' x='{x0:.1f}' y='{top}' width='{x1 - x0:.1f}' "
                f"height='{plot_h}' fill='{colour}' fill-opacity='0.22'>{title}</rect>"
            )
    # Grid and axes.
    watts = 0.0
    while watts <= y_max + 1e-9:
        gy = y(watts)
        out.append(
            f"<line x1='{left}' y1='{gy:.1f}' x2='{left + plot_w}' y2='{gy:.1f}' "
            f"stroke='{_GRID}' stroke-width='1'/>"
        )
        out.append(
            f"<text x='{left - 6}' y='{gy + 4:.1f}' text-anchor='end' fill='{_TEXT}'>"
            f"{escape(_watts_label(watts, y_max))}</text>"
        )
        watts += y_step
    out.append(
        f"<text x='{left - 6}' y='{top + _UNLIMITED_Y + 4}' text-anchor='end' fill='{_TEXT}' "
        "font-size='11'>no limit</text>"
    )
    out.append(
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' "
        f"stroke='#9ca3af' stroke-width='1'/>"
    )
    out += _time_axis(since, until, x, top, plot_h, plot_w)
    out.append(_limit_path(timeline, x, y, top))
    out += _write_markers(timeline, x, y)
    out += legend
    if not timeline.limits:
        out.append(
            f"<text x='{left + plot_w / 2:.1f}' y='{top + plot_h / 2:.1f}' text-anchor='middle' "
            f"fill='#6b7280' font-size='14'>no limit recorded in this period</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _nice_scale(maximum: float) -> tuple[float, float]:
    """(axis top, tick step): the top a round number above the data, 4 to 8 ticks."""
    if maximum <= 0:
        return 1000.0, 250.0
    target = maximum * 1.08
    magnitude = 10 ** math.floor(math.log10(target / 4))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if target / step <= 6:
            return math.ceil(target / step) * step, step
    return math.ceil(target / (10 * magnitude)) * 10 * magnitude, 10 * magnitude


def _watts_label(watts: float, y_max: float) -> str:
    if y_max >= 2000:
        return f"{watts / 1000:g} kW"
    return f"{watts:g} W"


def _time_axis(
    since: datetime,
    until: datetime,
    x: _XScale,
    top: int,
    plot_h: int,
    plot_w: int,
) -> list[str]:
    span_s = max((until - since).total_seconds(), 1e-3)
    max_labels = max(plot_w // 90, 2)
    step = next((s for s in _TIME_STEPS if span_s / s <= max_labels), _TIME_STEPS[-1])
    first = math.ceil((since - _EPOCH).total_seconds() / step) * step
    out: list[str] = []
    base = top + plot_h
    right = LEFT_MARGIN + plot_w
    axis_label = "time (UTC)"  # right-aligned under the plot's end, in the row of the dates
    # A date that would run into it (a day that begins near the right end) joins it instead.
    dates_end_at = right - _text_width(axis_label, 11) - 8
    previous_day = None
    tick = _EPOCH + timedelta(seconds=first)
    while tick <= until:
        tx = x(tick)
        day = tick.date()
        if step >= 86400:
            label, sub = tick.strftime("%a %d %b"), ""
        else:
            label = tick.strftime("%H:%M:%S" if step < 60 else "%H:%M")
            sub = tick.strftime("%Y-%m-%d") if day != previous_day else ""
        previous_day = day
        out.append(
            f"<line x1='{tx:.1f}' y1='{top}' x2='{tx:.1f}' y2='{base + 4}' "
            f"stroke='{_GRID}' stroke-width='1'/>"
        )
        out.append(
            f"<text x='{tx:.1f}' y='{base + 17}' text-anchor='middle' fill='{_TEXT}'>{label}</text>"
        )
        if sub and tx + _text_width(sub, 11) / 2 > dates_end_at:
            axis_label = f"{sub} · {axis_label}"
        elif sub:
            out.append(
                f"<text x='{tx:.1f}' y='{base + 31}' text-anchor='middle' fill='#6b7280' "
                f"font-size='11'>{sub}</text>"
            )
        tick += timedelta(seconds=step)
    out.append(
        f"<text x='{right:.1f}' y='{base + 31}' text-anchor='end' fill='#6b7280' "
        f"font-size='11'>{axis_label}</text>"
    )
    return out


def _text_width(text: str, font_size: float) -> float:
    """A generous estimate of a label's width in the chart's sans-serif font (digits and
    lower case run ~0.55 em)."""
    return 0.6 * font_size * len(text)


def _limit_path(timeline: Timeline, x: _XScale, y: _YScale, top: int) -> str:
    """The step line: solid where a limit is in force, dashed along the top where unlimited."""
    parts: list[str] = []
    previous_end: datetime | None = None
    for span in timeline.limits:
        level = y(span.limit_W) if span.limit_W is not None else float(top + _UNLIMITED_Y)
        x0, x1 = x(span.start), x(span.end)
        if previous_end is not None and previous_end == span.start:
            parts.append(f"V{level:.1f}H{x1:.1f}")
        else:
            parts.append(f"M{x0:.1f},{level:.1f}H{x1:.1f}")
        previous_end = span.end
    solid = (
        f"<path class='limit' d='{''.join(parts)}' fill='none' stroke='{LIMIT_COLOUR}' "
        "stroke-width='2.5' stroke-linejoin='round'/>"
        if parts
        else ""
    )
    unlimited = [
        f"<line class='unlimited' x1='{x(s.start):.1f}' y1='{top + _UNLIMITED_Y}' "
        f"x2='{x(s.end):.1f}' y2='{top + _UNLIMITED_Y}' stroke='white' stroke-width='2.5' "
        "stroke-dasharray='6 5'>"
        f"<title>unlimited: {_iso(s.start)} to {_iso(s.end)}</title></line>"
        for s in timeline.limits
        if s.limit_W is None
    ]
    titled = [
        f"<line x1='{x(s.start):.1f}' y1='{y(s.limit_W):.1f}' x2='{x(s.end):.1f}' "
        f"y2='{y(s.limit_W):.1f}' stroke='transparent' stroke-width='8'>"
        f"<title>{s.limit_W:g} W ({escape(s.state)}): {_iso(s.start)} to {_iso(s.end)}"
        "</title></line>"
        for s in timeline.limits
        if s.limit_W is not None
    ]
    return "\n".join([solid, *unlimited, *titled])


def _write_markers(timeline: Timeline, x: _XScale, y: _YScale) -> list[str]:
    out: list[str] = []
    for write in timeline.writes:
        fields = write.fields
        value = fields.get("value_W")
        finite = isinstance(value, int | float) and math.isfinite(value)
        wx = x(write.time)
        if not fields.get("active", True):
            wy = y(math.inf)  # "no limit": on the top line
        elif isinstance(value, int | float) and finite:
            wy = y(float(value))
        else:
            wy = y(0.0)
        shown = f"{value:g} W" if finite else str(value)
        active = "" if fields.get("active", True) else " (inactive)"
        verdict = "approved" if fields.get("approved") else f"denied: {fields.get('reason')}"
        title = (
            f"<title>write {shown}{active} by {escape(str(fields.get('ski')))} at "
            f"{_iso(write.time)}: {escape(verdict)}</title>"
        )
        if fields.get("approved"):
            out.append(
                f"<path class='write approved' d='M{wx - 5:.1f},{wy - 10:.1f}H{wx + 5:.1f}"
                f"L{wx:.1f},{wy - 1:.1f}Z' fill='{APPROVED_COLOUR}' stroke='white' "
                f"stroke-width='0.8'>{title}</path>"
            )
        else:
            out.append(
                f"<path class='write denied' d='M{wx - 4:.1f},{wy - 4:.1f}L{wx + 4:.1f},"
                f"{wy + 4:.1f}M{wx - 4:.1f},{wy + 4:.1f}L{wx + 4:.1f},{wy - 4:.1f}' "
                f"stroke='{DENIED_COLOUR}' stroke-width='2.2'>{title}</path>"
            )
    return out


def _legend(width: int, left: int) -> tuple[list[str], int]:
    """The legend rows above the plot (wrapped to the width) and the height they take."""
    items: list[tuple[str, str]] = [
        (
            f"<line x1='0' y1='0' x2='15' y2='0' stroke='{LIMIT_COLOUR}' stroke-width='2.5'/>",
            "limit in force",
        ),
        (
            f"<line x1='0' y1='0' x2='15' y2='0' stroke='{LIMIT_COLOUR}' stroke-width='2.5' "
            "stroke-dasharray='4 3'/>",
            "no limit",
        ),
        (f"<path d='M2,-5H12L7,4Z' fill='{APPROVED_COLOUR}'/>", "write approved"),
        (
            f"<path d='M3,-4L11,4M3,4L11,-4' stroke='{DENIED_COLOUR}' stroke-width='2.2'/>",
            "write denied",
        ),
    ]
    for state, colour in STATE_COLOURS.items():
        fill = (
            f"url(#failsafe-hatch)' stroke='{colour}"
            if state == "Failsafe"
            else f"{colour}' fill-opacity='0.45"
        )
        items.append((f"<rect x='0' y='-6' width='15' height='12' fill='{fill}'/>", state))
    out: list[str] = []
    cx, cy = float(left), 16
    for symbol, label in items:
        needed = 24 + 6.3 * len(label)
        if cx + needed > width - 8 and cx > left:
            cx, cy = float(left), cy + 18
        out.append(
            f"<g class='legend' transform='translate({cx:.1f},{cy})'>{symbol}"
            f"<text x='20' y='4' fill='{_TEXT}'>{escape(label)}</text></g>"
        )
        cx += needed + 8
    return out, cy + 12
