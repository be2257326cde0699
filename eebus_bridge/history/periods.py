"""What the history says about a time window: states, the limit in force, limited periods, totals.

Pure: a list of `Activity` values in, frozen values out (no clock, no file), so that the chart,
the report and the status page agree, and every number in a dispute can be checked by a test.

How the records are read (choices where the issue is silent):

- The limit in force is what the bridge *published* (kind "publication": `limit_W`, None =
  unlimited), from its time until the next publication. Init and Failsafe publish the failsafe
  limit, so they count as limited, exactly as the charger was.
- The state comes from "state" records (with the spec rule that caused the change) and from each
  publication's `state` (the start-up publication of Init has no state change before it).
- A "bridge" stop ends whatever was in force: after it nothing is known until the next start.
  A start without a stop before it (a crash or power cut) ends it at the start.
- A limited period is a run of publications with the same limit, state and energy guard. Its
  `cause` is the rule of the state change that began it (e.g. "LPC-904", "LPC-911"), "start"
  for the Init limit at start-up, or "new value" for a further write within Limited.
- `ski` of a Limited period is the energy guard whose approved write set the limit (the last
  approved active write before the publication); Init and Failsafe periods have none.
- A period's `deliveries` say when each output first confirmed the publication that began it
  (a "delivery" record with the same version): the answer to "was it honoured on time?".
- Energy cap hours (kWh) = the integral of the limit over the limited time: the most energy the
  charger could have drawn while it was limited. It is an upper bound, not a metered value.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from eebus_bridge.activity import Activity

LIMITED_STATES = frozenset({"Limited", "Failsafe", "Init"})


@attrs.frozen
class StateSpan:
    """The LPC state from `start` to `end` (clipped to the window)."""

    state: str
    start: datetime
    end: datetime


@attrs.frozen
class LimitSpan:
    """The published limit from `start` to `end`; limit_W None = unlimited."""

    limit_W: float | None
    state: str
    start: datetime
    end: datetime


@attrs.frozen
class LimitedPeriod:
    """One row of the report's period table: a limit in force, by whom and why."""

    start: datetime
    end: datetime
    ongoing: bool  # still in force at the end of the window
    limit_W: float
    state: str
    ski: str | None
    cause: str
    end_time: str | None  # the end the energy guard announced (ISO), if any
    # (sink, seconds from publication to its first successful delivery), in delivery order
    deliveries: tuple[tuple[str, float], ...] = ()

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600.0

    @property
    def energy_cap_kWh(self) -> float:
        return self.limit_W * self.hours / 1000.0


@attrs.frozen
class Totals:
    hours_limited: float  # Init, Limited and Failsafe: a limit was in force
    hours_limited_by_eg: float  # state Limited only
    hours_failsafe: float
    energy_cap_kWh: float  # integral of the limit over the limited time
    periods: int
    delivery_failures: int
    writes_approved: int
    writes_denied: int
    latency_median_s: float | None  # sidecar event -> publication
    latency_max_s: float | None


@attrs.frozen
class Timeline:
    since: datetime
    until: datetime
    states: tuple[StateSpan, ...]
    limits: tuple[LimitSpan, ...]
    writes: tuple[Activity, ...]  # "write" activities inside the window
    periods: tuple[LimitedPeriod, ...]
    totals: Totals


@attrs.define
class _Open:
    """What is in force while walking the records."""

    start: datetime
    value: Any
    version: Any = None  # the publication's version, to match its deliveries
    delivered: dict[str, float] = attrs.Factory(dict)


def derive_timeline(activities: Iterable[Activity], since: datetime, until: datetime) -> Timeline:
    """Walk the records (sorted by time; records before `since` only set what was in force)."""
    ordered = sorted(activities, key=lambda a: a.time)
    states: list[StateSpan] = []
    limits: list[LimitSpan] = []
    periods: list[LimitedPeriod] = []
    state: _Open | None = None
    limit: _Open | None = None  # value: (limit_W, state, ski, cause, end_time)
    state_rule = "start"
    state_changed_at: datetime | None = None
    last_writer: str | None = None

    def clip(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
        start, end = max(start, since), min(end, until)
        return (start, end) if end > start else None

    def close_state(at: datetime) -> None:
        nonlocal state
        if state is not None:
            span = clip(state.start, at)
            if span is not None:
                states.append(StateSpan(state.value, *span))
        state = None

    def close_limit(at: datetime, *, ongoing: bool = False) -> None:
        nonlocal limit
        if limit is not None:
            span = clip(limit.start, at)
            limit_W, in_state, ski, cause, end_time = limit.value
            if span is not None:
                limits.append(LimitSpan(limit_W, in_state, *span))
                if limit_W is not None:
                    periods.append(
                        LimitedPeriod(
                            start=span[0],
                            end=span[1],
                            ongoing=ongoing,
                            limit_W=float(limit_W),
                            state=in_state,
                            ski=ski,
                            cause=cause,
                            end_time=end_time,
                            deliveries=tuple(limit.delivered.items()),
                        )
                    )
        limit = None

    def set_state(new: str, at: datetime) -> None:
        nonlocal state
        if state is None or state.value != new:
            close_state(at)
            state = _Open(at, new)

    for activity in ordered:
        at = activity.time
        if at >= until:
            break
        fields = activity.fields
        kind = activity.kind
        if kind == "bridge":
            close_state(at)
            close_limit(at)
            state_rule = "start"
            state_changed_at = None
        elif kind == "state":
            set_state(str(fields.get("new")), at)
            state_rule = str(fields.get("rule") or "?")
            state_changed_at = at
        elif kind == "write" and fields.get("approved") and fields.get("active"):
            last_writer = fields.get("ski")
        elif kind == "delivery" and limit is not None and fields.get("ok"):
            sink = str(fields.get("sink"))
            if fields.get("version") == limit.version and sink not in limit.delivered:
                limit.delivered[sink] = (at - limit.start).total_seconds()
        elif kind == "publication":
            in_state = str(fields.get("state"))
            set_state(in_state, at)
            limit_W = fields.get("limit_W")
            ski = last_writer if in_state == "Limited" else None
            if limit is not None and limit.value[1] == in_state and state_changed_at is not None:
                # No state change since the last publication: a new value within the state.
                cause = "new value" if state_changed_at <= limit.start else state_rule
            else:
                cause = state_rule
            value = (limit_W, in_state, ski, cause, fields.get("end_time"))
            if limit is not None and limit.value[:3] == value[:3]:
                continue  # same limit re-published (e.g. a renewed duration): one period
            close_limit(at)
            limit = _Open(at, value, fields.get("version"))
    close_state(until)
    close_limit(until, ongoing=True)

    writes = tuple(a for a in ordered if a.kind == "write" and since <= a.time < until)
    return Timeline(
        since=since,
        until=until,
        states=tuple(states),
        limits=tuple(limits),
        writes=writes,
        periods=tuple(periods),
        totals=_totals(periods, writes, ordered, since, until),
    )


def _totals(
    periods: Sequence[LimitedPeriod],
    writes: Sequence[Activity],
    ordered: Sequence[Activity],
    since: datetime,
    until: datetime,
) -> Totals:
    latencies = [
        float(a.fields["latency_s"])
        for a in ordered
        if a.kind == "publication"
        and since <= a.time < until
        and isinstance(a.fields.get("latency_s"), int | float)
    ]
    return Totals(
        hours_limited=sum(p.hours for p in periods),
        hours_limited_by_eg=sum(p.hours for p in periods if p.state == "Limited"),
        hours_failsafe=sum(p.hours for p in periods if p.state == "Failsafe"),
        energy_cap_kWh=sum(p.energy_cap_kWh for p in periods),
        periods=len(periods),
        delivery_failures=sum(
            1
            for a in ordered
            if a.kind == "delivery" and since <= a.time < until and not a.fields.get("ok")
        ),
        writes_approved=sum(1 for w in writes if w.fields.get("approved")),
        writes_denied=sum(1 for w in writes if not w.fields.get("approved")),
        latency_median_s=statistics.median(latencies) if latencies else None,
        latency_max_s=max(latencies) if latencies else None,
    )
