"""StatusTracker: the activity observer behind the status page and the metrics (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.status import StatusTracker
from eebus_bridge.status.tracker import LATENCY_BUCKETS_S

START = datetime(2026, 5, 7, 12, 0, tzinfo=UTC)
SKI = "5E:1D:6A:3C:0F:4B:2A:79:80:C1:D2:E3:F4:A5:B6:C7:D8:E9:F0:01"
NORMAL_SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"


def feed_with_tracker() -> tuple[ActivityFeed, StatusTracker]:
    times = iter(START + timedelta(seconds=i) for i in range(1000))
    feed = ActivityFeed(wall_clock=lambda: next(times))
    tracker = StatusTracker(["jsonl[-]"], wall_clock=lambda: START)
    feed.subscribe(tracker)
    return feed, tracker


def test_energy_managers_follow_discovery_and_removal() -> None:
    feed, tracker = feed_with_tracker()
    feed.record(
        "discovery",
        event="DISCOVERED",
        ski=SKI,
        brand="Demo",
        model="ControlBox",
        device_type="EnergyManagementSystem",
        trusted=False,
    )
    feed.record(
        "discovery",
        event="DISCOVERED",
        ski=NORMAL_SKI,
        brand="Demo",
        model="ControlBox 2",
        device_type="EnergyManagementSystem",
        trusted=True,
    )
    [manager] = tracker.energy_managers.values()
    assert manager.ski == NORMAL_SKI  # one device, however its SKI is written
    assert manager.model == "ControlBox 2"
    assert manager.trusted is True

    feed.record("discovery", event="REMOVED", ski=NORMAL_SKI, brand="", model="",
                device_type="", trusted=False)  # fmt: skip
    assert tracker.energy_managers == {}


def test_sidecar_connection_and_sinks() -> None:
    feed, tracker = feed_with_tracker()
    feed.record("sidecar", event="start", pid=4242)
    feed.record("connection", event="up", endpoint="127.0.0.1:50051")
    feed.record("connection", event="lost", reason="StreamTerminatedError")
    feed.record("sidecar", event="exit", pid=4242, status=-9, reason="killed")
    feed.record("sidecar", event="restart", delay_s=5.0, reason="exited")
    feed.record("sidecar", event="start", pid=4343)
    feed.record("sink", sink="mqtt[x]", event="disconnected", reason="refused")
    feed.record("delivery", sink="jsonl[-]", version=1, ok=True, error=None)
    feed.record("delivery", sink="jsonl[-]", version=2, ok=False, error="disk full")

    sidecar = tracker.sidecar
    assert (sidecar.pid, sidecar.running, sidecar.restarts) == (4343, True, 1)
    assert sidecar.last_exit == "status -9, killed"
    assert sidecar.connected is False
    assert sidecar.connection_error == "StreamTerminatedError"
    assert sidecar.connection_losses == 1
    jsonl = tracker.sinks["jsonl[-]"]
    assert (jsonl.deliveries, jsonl.failures) == (1, 1)
    assert jsonl.last_delivery is not None
    assert jsonl.last_delivery.error == "disk full"
    mqtt = tracker.sinks["mqtt[x]"]  # a sink first named by an event is added
    assert (mqtt.connected, mqtt.reason) == (False, "refused")


def test_counters_and_latency_buckets() -> None:
    feed, tracker = feed_with_tracker()
    for approved in (True, True, False):
        feed.record("write", ski=NORMAL_SKI, msg_counter=1, value_W=100.0, active=True,
                    duration_s=None, approved=approved, reason="")  # fmt: skip
    feed.record("failsafe_write", ski=NORMAL_SKI, what="limit", value=-1.0, accepted=False,
                written_back=4200.0)  # fmt: skip
    for latency in (0.0004, 0.0015, 0.003, None, 7.0):
        feed.record("publication", version=1, state="Limited", limit_W=100.0, end_time=None,
                    latency_s=latency)  # fmt: skip
    feed.record("state", old="Init", new="Limited", rule="LPC-904")

    assert tracker.writes == {"approved": 2, "denied": 1}
    assert tracker.failsafe_writes == {("limit", "rejected"): 1}
    assert tracker.publications == 5
    assert tracker.latency_count == 4  # the time-driven one has no event latency
    assert tracker.latency_buckets[LATENCY_BUCKETS_S.index(0.0005)] == 1
    assert tracker.latency_buckets[LATENCY_BUCKETS_S.index(0.002)] == 1
    assert tracker.latency_buckets[LATENCY_BUCKETS_S.index(0.005)] == 1
    assert tracker.latency_buckets[-1] == 1  # above every bound
    assert tracker.last_rule == "LPC-904"
    assert tracker.state_since is not None


def test_malformed_fields_never_drop_the_observer() -> None:
    feed, tracker = feed_with_tracker()
    feed.record("discovery", event="DISCOVERED")  # no SKI
    feed.record("delivery")  # nothing at all
    feed.record("sidecar", event="exit")
    feed.record("publication", latency_s="fast")
    feed.record("write", ski=NORMAL_SKI, approved=True)

    assert tracker.writes["approved"] == 1  # still subscribed after the odd ones
    assert tracker.sidecar.last_exit == "exited"
    assert list(tracker.sinks) == ["jsonl[-]"]  # a delivery without a sink names none
