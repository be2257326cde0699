"""The activity feed: one call per thing the bridge did, for whoever wants to know.

The runtime records what happens (a write answered, a state change, a publication, a sink
delivery, a sidecar start or exit, an energy manager seen or lost) as plain `Activity` values.
Observers subscribe: the history store queues them for its writer thread, the status endpoint
updates its metrics and its view. Recording sits on the event path, so it must stay cheap and
must never block or raise into the caller: observers are plain synchronous callables that only
append or count, and an observer that raises is logged once and dropped.

Kinds and their fields (all values JSON-friendly; `time` is set by the feed, UTC):

    bridge          event: "start" | "stop"
    sidecar         event: "start" (pid) | "exit" (pid, reason) | "restart" (delay_s, reason)
    connection      event: "up" (endpoint, fresh) | "lost" (reason)
    eg              event: "active" | "heartbeat_lost" | "heartbeat_back" | "released"; ski
                    (None when no EG was active)
    discovery       event: "DISCOVERED" | "REMOVED"; ski, brand, model, device_type, trusted
    write           ski, msg_counter, value_W, active, duration_s (None = no end),
                    approved, reason
    failsafe_write  ski, what ("limit" | "duration"), value, accepted, written_back (None or value)
    state           old, new, rule
    publication     version, state, limit_W (None = unlimited), end_time (ISO or None),
                    latency_s (sidecar event -> publication, None when time-driven)
    delivery        sink, version, ok, error (None or text)
    sink            sink, event: "connected" | "disconnected"; reason (disconnected only)

A write's `reason` is "" when approved; `duration_s` None means no end. A failsafe write is
`accepted` when the engine took the value as is; `written_back` is the value the bridge wrote
back to the sidecar instead (None when nothing was written back).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import attrs

log = logging.getLogger("eebus_bridge.activity")

ActivityKind = Literal[
    "bridge",
    "sidecar",
    "connection",
    "eg",
    "discovery",
    "write",
    "failsafe_write",
    "state",
    "publication",
    "delivery",
    "sink",
]
ACTIVITY_KINDS: tuple[ActivityKind, ...] = get_args(ActivityKind)

Observer = Callable[["Activity"], None]


@attrs.frozen
class Activity:
    """One thing that happened: its kind, when (UTC wall clock) and its fields."""

    kind: ActivityKind
    time: datetime
    fields: dict[str, Any]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ActivityFeed:
    """Fan-out of `Activity` values to synchronous observers. One per bridge."""

    def __init__(self, *, wall_clock: Callable[[], datetime] = _utc_now) -> None:
        self._observers: list[Observer] = []
        self._wall_clock = wall_clock

    @property
    def observed(self) -> bool:
        """True when somebody listens (callers may skip preparing fields otherwise)."""
        return bool(self._observers)

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def record(self, kind: ActivityKind, **fields: Any) -> None:
        """Tell every observer; cheap when nobody listens, never raises."""
        if not self._observers:
            return
        activity = Activity(kind=kind, time=self._wall_clock(), fields=fields)
        for observer in list(self._observers):
            try:
                observer(activity)
            except Exception:
                log.exception("activity observer %r failed; it is dropped", observer)
                self.unsubscribe(observer)


def record_delivery(feed: ActivityFeed, sink: str, version: int, error: str | None) -> None:
    """A sink handed publication `version` to its peer (error None) or could not (error text)."""
    feed.record("delivery", sink=sink, version=version, ok=error is None, error=error)
