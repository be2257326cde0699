"""The activity feed: observers see every record in order; a failing observer is dropped."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eebus_bridge.activity import Activity, ActivityFeed
from eebus_bridge.island import open_island
from tests._bridge_fixtures import (
    EG_SKI,
    limit_write,
    make_config,
    running_bridge,
    simulated_bridge,
)
from tests._util import wait_until
from tools.hems_simulator import ActionSpec, free_tcp_port


def test_observers_get_every_record_with_its_time_and_fields() -> None:
    moment = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    feed = ActivityFeed(wall_clock=lambda: moment)
    seen: list[Activity] = []
    feed.subscribe(seen.append)
    feed.record("state", old="Init", new="Limited", rule="LPC-904")
    feed.record("bridge", event="stop")
    assert seen == [
        Activity("state", moment, {"old": "Init", "new": "Limited", "rule": "LPC-904"}),
        Activity("bridge", moment, {"event": "stop"}),
    ]


def test_a_failing_observer_is_logged_and_dropped_and_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = ActivityFeed()
    seen: list[str] = []

    def broken(activity: Activity) -> None:
        raise RuntimeError("observer bug")

    feed.subscribe(broken)
    feed.subscribe(lambda activity: seen.append(activity.kind))
    feed.record("bridge", event="start")
    feed.record("bridge", event="stop")
    assert seen == ["bridge", "bridge"]
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1


# -- what a running bridge records ---------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.activities: list[Activity] = []

    def __call__(self, activity: Activity) -> None:
        self.activities.append(activity)

    def of(self, kind: str, **match: object) -> list[dict[str, object]]:
        return [
            a.fields
            for a in self.activities
            if a.kind == kind and all(a.fields.get(k) == v for k, v in match.items())
        ]


async def test_a_run_records_writes_failsafe_writes_states_publications_and_eg_changes(
    tmp_path: Path,
) -> None:
    recorder = _Recorder()
    feed = ActivityFeed()
    feed.subscribe(recorder)
    actions = (
        limit_write(0.3, 2000.0, duration_s=60.0),
        ActionSpec(action="write_failsafe_limit", at_s=0.4, value=-5.0),
        ActionSpec(action="write_failsafe_duration", at_s=0.5, duration_s=10800.0),
    )
    async with simulated_bridge(
        tmp_path, activity=feed, heartbeat_window_s=2.0, actions=actions
    ) as (sim, _, publications):
        await publications.wait_state("Limited")
        await wait_until(lambda: len(recorder.of("failsafe_write")) == 2)
        await wait_until(lambda: bool(recorder.of("delivery", ok=True, version=2)))
        sim.stop_eg_heartbeat()
        await publications.wait_state("Failsafe", limit_s=6)
        sim.start_eg_heartbeat()
        await publications.wait_state("Unlimited/autonomous", limit_s=6)
        await wait_until(lambda: bool(recorder.of("eg", event="heartbeat_back")))
    kinds = {a.kind for a in recorder.activities}
    assert {
        "bridge",
        "connection",
        "eg",
        "write",
        "failsafe_write",
        "state",
        "publication",
    } <= kinds
    assert {"delivery", "sink", "discovery"} <= kinds
    assert recorder.of("bridge") == [{"event": "start"}, {"event": "stop"}]
    assert recorder.of("connection", event="up")
    [write] = recorder.of("write")
    assert write["ski"] == EG_SKI
    assert (write["value_W"], write["active"], write["duration_s"]) == (2000.0, True, 60.0)
    assert (write["approved"], write["reason"]) == (True, "")
    limit_write_, duration_write = recorder.of("failsafe_write")
    assert limit_write_ == {
        "ski": EG_SKI,
        "what": "limit",
        "value": -5.0,
        "accepted": False,
        "written_back": 4200.0,
    }
    assert duration_write["what"] == "duration"
    assert duration_write["accepted"] is True
    assert duration_write["written_back"] is None
    assert [(s["new"], s["rule"]) for s in recorder.of("state")] == [
        ("Limited", "LPC-904"),
        ("Failsafe", "LPC-911"),
        ("Unlimited/autonomous", "LPC-921"),
    ]
    published = recorder.of("publication")
    assert [p["state"] for p in published] == [p.state for p in publications.history]
    assert published[0]["latency_s"] is None  # the Init publication at start
    limited = published[1]
    assert limited["limit_W"] == 2000.0
    assert limited["end_time"] is not None
    assert isinstance(limited["latency_s"], float)
    assert 0.0 <= limited["latency_s"] < 5.0
    eg_events = [e["event"] for e in recorder.of("eg")]
    assert eg_events[:1] == ["active"]
    assert "heartbeat_lost" in eg_events
    assert recorder.of("eg", event="heartbeat_lost")[0]["ski"] == EG_SKI
    [sink] = {d["sink"] for d in recorder.of("delivery")}
    assert str(sink).startswith("jsonl[")
    assert recorder.of("sink", event="connected", sink=sink)
    [discovered] = recorder.of("discovery", event="DISCOVERED")
    assert discovered["ski"] == EG_SKI


async def test_a_managed_sidecar_records_its_start_exit_and_restart(tmp_path: Path) -> None:
    recorder = _Recorder()
    feed = ActivityFeed()
    feed.subscribe(recorder)
    config = make_config(
        tmp_path, grpc_port=free_tcp_port(), manage=True, timing={"init_timeout_s": 30.0}
    )
    async with open_island(), running_bridge(config, activity=feed) as (bridge, _):
        await wait_until(lambda: bridge.connections >= 1, limit_s=20)
        [started] = recorder.of("sidecar", event="start")
        os.kill(int(str(started["pid"])), signal.SIGKILL)
        await wait_until(lambda: bridge.connections >= 2, limit_s=20)
    sidecar = recorder.of("sidecar")
    assert [s["event"] for s in sidecar[:4]] == ["start", "exit", "restart", "start"]
    assert sidecar[1]["pid"] == started["pid"]
    # Which failure the group saw first (the exit, or the broken streams) is a race.
    assert any(word in str(sidecar[1]["reason"]) for word in ("SidecarExited", "Unreachable"))
    assert sidecar[3]["pid"] != started["pid"]
    assert recorder.of("connection", event="lost")
