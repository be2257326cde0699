"""The bridge's status as one plain dict: the body of /api/status, the page's data, the CLI's.

Built on request from three sources the bridge already holds, never from the sidecar:
the latest publication (state, limit and end in force: exactly what the outputs were told),
the LPC engine (active EG, heartbeat age, failsafe values, next deadline) and the
`StatusTracker` (sidecar, connection, sinks, energy managers).

Health (`healthy` + `reasons`) answers "are the bridge's outputs working?", for systemd
watchdogs and container probes. Unhealthy: no connection to the sidecar, an output that is
disconnected or whose last delivery failed or that has delivered nothing yet, an LPC task
that is more than LPC_LATE_S behind its deadline, a bridge that is stopping. Choice where the
issue is silent: an LPC state (Failsafe, say) is not a health problem: the bridge is doing its
job; the state is on the page and in the metrics for alerts of their own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs

from eebus_bridge import __version__
from eebus_bridge.config import Config
from eebus_bridge.lpc import LpcEngine
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.status.tracker import SinkStatus, StatusTracker

LPC_LATE_S = 5.0
"""An LPC deadline overdue by this much means the lpc task is stuck (it wakes within ms)."""


class HistoryWriterState(Protocol):
    """What the status shows of the history writer (eebus_bridge.history.HistoryStore)."""

    @property
    def written(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...


@attrs.frozen
class StatusSources:
    """Everything a status snapshot reads; the runtime builds one per bridge."""

    config: Config
    tracker: StatusTracker
    engine: LpcEngine
    publications: LatestValue[Publication]
    monotonic: Callable[[], float]  # the engine's clock (trio.current_time in the bridge)
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    history_enabled: bool = False
    history_writer: HistoryWriterState | None = None


def iso(time: datetime | None) -> str | None:
    return None if time is None else time.isoformat(timespec="milliseconds")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def status_snapshot(sources: StatusSources) -> dict[str, Any]:
    """The whole status as JSON-friendly data (see the module docstring)."""
    tracker = sources.tracker
    now_wall = sources.wall_clock()
    now = sources.monotonic()
    engine = sources.engine.status(now)
    _, publication = sources.publications.get()
    allowlist = set(sources.config.eebus.ems_ski_allowlist)
    sidecar = tracker.sidecar
    reasons = health_reasons(sources, now)
    deadline = engine.next_deadline
    return {
        "version": __version__,
        "time": iso(now_wall),
        "state": publication.state if publication else engine.state.value,
        "limit_W": publication.limit_W if publication else engine.limit_W,
        "end": iso(publication.end_time) if publication else None,
        "published": iso(publication.time) if publication else None,
        "publication_version": sources.publications.version,
        "state_since": iso(tracker.state_since or tracker.started),
        "rule": tracker.last_rule,
        "active_eg": engine.active_ski,
        "heartbeat_age_s": _seconds(engine.last_heartbeat_age_s),
        "heartbeat_timeout_s": sources.config.lpc.timing.heartbeat_timeout_s,
        "eg_event": tracker.eg_event,
        "failsafe": {
            "limit_W": engine.failsafe.limit_W,
            "duration_s": engine.failsafe.duration_s,
        },
        "next_deadline_in_s": None if deadline is None else _seconds(max(0.0, deadline - now)),
        "bridge": {
            "pid": os.getpid(),
            "started": iso(tracker.started),
            "uptime_s": _seconds((now_wall - tracker.started).total_seconds()),
        },
        "sidecar": {
            "managed": sources.config.sidecar.manage,
            "pid": sidecar.pid,
            "running": sidecar.running,
            "started": iso(sidecar.started),
            "uptime_s": (
                _seconds((now_wall - sidecar.started).total_seconds())
                if sidecar.running and sidecar.started
                else None
            ),
            "restarts": sidecar.restarts,
            "last_exit": sidecar.last_exit,
            "connected": sidecar.connected,
            "connection_changed": iso(sidecar.connection_changed),
            "connection_error": sidecar.connection_error,
            "endpoint": sidecar.endpoint,
            "grpc_port": sources.config.eebus.grpc_port,
            "grpc_transport": sources.config.eebus.grpc_transport,
        },
        "sinks": [_sink(sink) for sink in tracker.sinks.values()],
        "energy_managers": [
            {
                "ski": manager.ski,
                "brand": manager.brand,
                "model": manager.model,
                "device_type": manager.device_type,
                "trusted": manager.trusted,
                "allowlisted": manager.ski in allowlist,
                "active": manager.ski == engine.active_ski,
                "seen": iso(manager.seen),
            }
            for manager in sorted(tracker.energy_managers.values(), key=lambda m: m.ski)
        ],
        "history": _history(sources),
        "healthy": not reasons,
        "reasons": reasons,
    }


def _history(sources: StatusSources) -> dict[str, Any]:
    writer = sources.history_writer
    if not sources.history_enabled or writer is None:
        return {"enabled": sources.history_enabled}
    return {
        "enabled": True,
        "written": writer.written,
        "dropped": writer.dropped,
        "last_error": writer.last_error,
    }


def _sink(sink: SinkStatus) -> dict[str, Any]:
    last = sink.last_delivery
    return {
        "name": sink.name,
        "connected": sink.connected,
        "changed": iso(sink.changed),
        "reason": sink.reason,
        "last_delivery": None
        if last is None
        else {"time": iso(last.time), "version": last.version, "ok": last.ok, "error": last.error},
        "deliveries": sink.deliveries,
        "failures": sink.failures,
    }


def health_reasons(sources: StatusSources, now: float) -> list[str]:
    """Why the bridge is not healthy, one line each; empty when it is."""
    tracker = sources.tracker
    reasons: list[str] = []
    if tracker.stopping:
        reasons.append("the bridge is stopping")
    sidecar = tracker.sidecar
    if not sidecar.connected:
        why = f": {sidecar.connection_error}" if sidecar.connection_error else ""
        reasons.append(f"no connection to the sidecar{why}")
    for sink in tracker.sinks.values():
        last = sink.last_delivery
        if sink.connected is False:
            why = f": {sink.reason}" if sink.reason else ""
            reasons.append(f"output {sink.name} is disconnected{why}")
        elif last is not None and not last.ok:
            reasons.append(f"output {sink.name}: last delivery failed: {last.error or 'error'}")
        elif last is None and sink.connected is None:
            reasons.append(f"output {sink.name} has delivered nothing yet")
    deadline = sources.engine.next_deadline
    if deadline is not None and math.isfinite(deadline) and now - deadline > LPC_LATE_S:
        reasons.append(f"the LPC task is {now - deadline:.0f} s behind its deadline")
    return reasons
