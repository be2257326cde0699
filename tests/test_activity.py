"""The activity feed: observers see every record in order; a failing observer is dropped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eebus_bridge.activity import Activity, ActivityFeed


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
