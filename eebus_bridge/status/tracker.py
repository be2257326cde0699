"""What the status endpoint knows beyond the engine: kept up to date from the activity feed.

`StatusTracker` is an activity observer (see eebus_bridge/activity.py). It runs on the event
path, so each call only updates a few fields and counters: no I/O, no allocation beyond the
record it keeps, no locks (everything runs in the Trio thread). The web stack renders from it
on request; Prometheus counters are plain integers here and become metric families only when
/metrics is scraped, so the event path never pays for prometheus-client and the bridge does
not import it before the first publication is out.

Live facts the feed does not carry (state, limit and end in force, active EG, heartbeat age,
failsafe values) are read from the engine and the publication cell when a request comes in.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

import attrs

from eebus_bridge.activity import Activity
from eebus_bridge.ski import normalize_ski

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
"""Upper bounds of the event -> publication latency histogram (the target is p99 <= 5 ms)."""


@attrs.frozen
class Delivery:
    """A sink's last delivery attempt."""

    time: datetime
    version: int | None
    ok: bool
    error: str | None


@attrs.define
class SinkStatus:
    """One output as the feed reports it. connected None = no connection event yet (a JSONL
    file sink has no connection; its deliveries tell whether it works)."""

    name: str
    connected: bool | None = None
    changed: datetime | None = None  # when connected last changed
    reason: str | None = None  # why it disconnected
    last_delivery: Delivery | None = None
    deliveries: int = 0  # successful
    failures: int = 0


@attrs.define
class EnergyManager:
    """An EEBUS energy manager seen on the network (for pairing)."""

    ski: str
    brand: str
    model: str
    device_type: str
    trusted: bool
    seen: datetime


@attrs.define
class SidecarStatus:
    """The sidecar process (when managed) and the gRPC connection to it."""

    pid: int | None = None
    running: bool = False
    started: datetime | None = None
    restarts: int = 0
    last_exit: str | None = None  # "status 1: reason"
    connected: bool = False
    connection_changed: datetime | None = None
    connection_error: str | None = None
    connection_losses: int = 0
    endpoint: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StatusTracker:
    """Activity observer holding the status page's view and the Prometheus counters."""

    def __init__(
        self, sink_names: Iterable[str], *, wall_clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.started = wall_clock()
        self.stopping = False
        self.sinks: dict[str, SinkStatus] = {name: SinkStatus(name) for name in sink_names}
        self.sidecar = SidecarStatus()
        self.energy_managers: dict[str, EnergyManager] = {}
        self.state_since: datetime | None = None  # None = since the bridge started
        self.last_rule: str | None = None
        self.eg_event: str | None = None  # the last "eg" event: active, heartbeat_lost, ...
        self.writes: dict[str, int] = {"approved": 0, "denied": 0}
        self.failsafe_writes: dict[tuple[str, str], int] = {}  # (what, accepted|rejected)
        self.publications = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # last = above all bounds
        self.latency_sum_s = 0.0
        self.latency_count = 0

    def __call__(self, activity: Activity) -> None:
        handler = self._HANDLERS.get(activity.kind)
        if handler is not None:
            handler(self, activity.time, activity.fields)

    # -- one method per activity kind ------------------------------------------------------

    def _bridge(self, time: datetime, fields: dict[str, Any]) -> None:
        if fields.get("event") == "start":
            self.started = time
            self.stopping = False
        elif fields.get("event") == "stop":
            self.stopping = True

    def _sidecar(self, time: datetime, fields: dict[str, Any]) -> None:
        sidecar = self.sidecar
        event = fields.get("event")
        if event == "start":
            sidecar.pid = fields.get("pid")
            sidecar.running = True
            sidecar.started = time
        elif event == "exit":
            sidecar.running = False
            status, reason = fields.get("status"), fields.get("reason")
            parts = [] if status is None else [f"status {status}"]
            if reason:
                parts.append(str(reason))
            sidecar.last_exit = ", ".join(parts) or "exited"
        elif event == "restart":
            sidecar.restarts += 1

    def _connection(self, time: datetime, fields: dict[str, Any]) -> None:
        sidecar = self.sidecar
        if fields.get("event") == "up":
            sidecar.connected = True
            sidecar.connection_error = None
            sidecar.endpoint = fields.get("endpoint") or sidecar.endpoint
        elif fields.get("event") == "lost":
            if sidecar.connected:
                sidecar.connection_losses += 1
            sidecar.connected = False
            sidecar.connection_error = fields.get("reason")
        else:
            return
        sidecar.connection_changed = time

    def _eg(self, time: datetime, fields: dict[str, Any]) -> None:
        self.eg_event = fields.get("event")

    def _discovery(self, time: datetime, fields: dict[str, Any]) -> None:
        raw_ski = fields.get("ski")
        if not isinstance(raw_ski, str) or not raw_ski:
            return
        ski = normalize_ski(raw_ski)
        if fields.get("event") == "REMOVED":
            self.energy_managers.pop(ski, None)
        elif fields.get("event") == "DISCOVERED":
            self.energy_managers[ski] = EnergyManager(
                ski=ski,
                brand=str(fields.get("brand") or ""),
                model=str(fields.get("model") or ""),
                device_type=str(fields.get("device_type") or ""),
                trusted=bool(fields.get("trusted")),
                seen=time,
            )

    def _write(self, time: datetime, fields: dict[str, Any]) -> None:
        self.writes["approved" if fields.get("approved") else "denied"] += 1

    def _failsafe_write(self, time: datetime, fields: dict[str, Any]) -> None:
        key = (str(fields.get("what")), "accepted" if fields.get("accepted") else "rejected")
        self.failsafe_writes[key] = self.failsafe_writes.get(key, 0) + 1

    def _state(self, time: datetime, fields: dict[str, Any]) -> None:
        self.state_since = time
        self.last_rule = fields.get("rule") or None

    def _publication(self, time: datetime, fields: dict[str, Any]) -> None:
        self.publications += 1
        latency = fields.get("latency_s")
        if isinstance(latency, int | float) and latency >= 0:
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_S, latency)] += 1
            self.latency_sum_s += latency
            self.latency_count += 1

    def _delivery(self, time: datetime, fields: dict[str, Any]) -> None:
        sink = self._sink_named(fields.get("sink"))
        if sink is None:
            return
        ok = bool(fields.get("ok"))
        sink.last_delivery = Delivery(time, fields.get("version"), ok, fields.get("error"))
        if ok:
            sink.deliveries += 1
        else:
            sink.failures += 1

    def _sink(self, time: datetime, fields: dict[str, Any]) -> None:
        sink = self._sink_named(fields.get("sink"))
        event = fields.get("event")
        if sink is None or event not in ("connected", "disconnected"):
            return
        sink.connected = event == "connected"
        sink.changed = time
        sink.reason = None if sink.connected else (fields.get("reason") or None)

    def _sink_named(self, name: object) -> SinkStatus | None:
        if not isinstance(name, str) or not name:
            return None
        if name not in self.sinks:
            self.sinks[name] = SinkStatus(name)
        return self.sinks[name]

    _HANDLERS: ClassVar[dict[str, Callable[[StatusTracker, datetime, dict[str, Any]], None]]] = {
        "bridge": _bridge,
        "sidecar": _sidecar,
        "connection": _connection,
        "eg": _eg,
        "discovery": _discovery,
        "write": _write,
        "failsafe_write": _failsafe_write,
        "state": _state,
        "publication": _publication,
        "delivery": _delivery,
        "sink": _sink,
    }
