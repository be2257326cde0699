"""The history store on a real SQLite file: round trip, windows, retention, failures."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from eebus_bridge.activity import ACTIVITY_KINDS, Activity, ActivityFeed
from eebus_bridge.history import HistoryFileError, HistoryStore, read_history
from eebus_bridge.history.store import SCHEMA_VERSION, connect_for_writing

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"

# One record of every kind, with the fields of activity.py's docstring.
EVERY_KIND: dict[str, dict[str, Any]] = {
    "bridge": {"event": "start"},
    "sidecar": {"event": "restart", "delay_s": 5.0, "reason": "SidecarExited: status 1"},
    "connection": {"event": "up", "endpoint": "localhost:50051", "fresh": True},
    "eg": {"event": "heartbeat_lost", "ski": SKI},
    "discovery": {
        "event": "DISCOVERED",
        "ski": SKI,
        "brand": "Demo",
        "model": "ControlBox",
        "device_type": "EnergyManagementSystem",
        "trusted": False,
    },
    "write": {
        "ski": SKI,
        "msg_counter": 7,
        "value_W": 4200.5,
        "active": True,
        "duration_s": None,
        "approved": False,
        "reason": "LPC-001: Active Power Consumption Limit must be >= 0 W",
    },
    "failsafe_write": {
        "ski": SKI,
        "what": "limit",
        "value": -1.0,
        "accepted": False,
        "written_back": 4200.0,
    },
    "state": {"old": "Limited", "new": "Failsafe", "rule": "LPC-911"},
    "publication": {
        "version": 3,
        "state": "Failsafe",
        "limit_W": 4200.0,
        "end_time": None,
        "latency_s": None,
    },
    "delivery": {"sink": "jsonl", "version": 3, "ok": True, "error": None},
    "sink": {"sink": "everest-api", "event": "disconnected", "reason": "Connection refused"},
}


def every_kind(start: datetime = T0) -> list[Activity]:
    start = start.replace(microsecond=start.microsecond // 1000 * 1000)  # stored in ms
    return [
        Activity(kind, start + timedelta(milliseconds=250 * i), EVERY_KIND[kind])  # type: ignore[arg-type]
        for i, kind in enumerate(ACTIVITY_KINDS)
    ]


async def write_all(path: Path, activities: Sequence[Activity], **options: Any) -> HistoryStore:
    """Run a store until it wrote `activities`, then close it as the bridge does."""
    store = HistoryStore(path, options.pop("retention_days", 36500), **options)
    for activity in activities:
        store.observe(activity)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await wait_for(lambda: store.written >= len(activities) and store.prunes >= 1)
        nursery.cancel_scope.cancel()
    await store.aclose()
    return store


async def wait_for(
    condition: Callable[[], bool], limit_s: float = 10.0, step_s: float = 0.01
) -> None:
    """Wait for the store's worker thread, up to `limit_s` of real time (the thread works in
    real time even under a MockClock, whose steps of `step_s` then pass in no time)."""
    deadline = time.monotonic() + limit_s
    while not condition():  # the worker thread has no Trio event to wait on
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {limit_s} s: {condition}")
        await trio.sleep(step_s)


def test_every_kind_round_trips_with_its_fields_and_ms_time(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    records = every_kind()
    trio.run(write_all, path, records)
    assert read_history(path, T0) == records
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        first = connection.execute("SELECT time_ms FROM activity ORDER BY id LIMIT 1").fetchone()
        assert first[0] == int(T0.timestamp() * 1000)


def test_window_is_half_open_and_kinds_filter(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    records = every_kind()
    trio.run(write_all, path, records)
    since, until = records[2].time, records[5].time
    assert read_history(path, since, until) == records[2:5]
    assert [a.kind for a in read_history(path, T0, kinds={"state", "write"})] == [
        "write",
        "state",
    ]
    assert read_history(path, T0 + timedelta(days=1)) == []


def test_context_adds_what_was_in_force_at_since(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    records = every_kind()
    trio.run(write_all, path, records)
    after_all = records[-1].time + timedelta(seconds=1)
    got = read_history(path, after_all, context=True)
    assert [a.kind for a in got] == ["bridge", "state", "publication"]
    assert got[2].fields["limit_W"] == 4200.0


def test_missing_or_empty_file_reads_as_no_history(tmp_path: Path) -> None:
    assert read_history(tmp_path / "missing.sqlite3", T0) == []
    sqlite3.connect(tmp_path / "empty.sqlite3").close()
    assert read_history(tmp_path / "empty.sqlite3", T0) == []
    (tmp_path / "broken.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(HistoryFileError, match="not a database"):
        read_history(tmp_path / "broken.sqlite3", T0)


def test_a_file_from_a_newer_bridge_is_refused_not_altered(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(Exception, match="newer eebus-bridge"):
        connect_for_writing(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_retention_deletes_old_rows_at_start(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    now = datetime.now(UTC)
    old = every_kind(now - timedelta(days=45))
    recent = every_kind(now - timedelta(days=5))
    trio.run(write_all, path, old + recent)
    assert len(read_history(path, now - timedelta(days=400))) == 2 * len(ACTIVITY_KINDS)
    # A store keeping 30 days, started on the same file, removes what is older.
    trio.run(functools.partial(write_all, path, [], retention_days=30))
    assert read_history(path, now - timedelta(days=400)) == recent


async def test_retention_is_enforced_hourly_while_running(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "history.sqlite3"
    now = datetime.now(UTC)
    store = HistoryStore(path, retention_days=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await wait_for(lambda: store.prunes == 1)
        # Arrives after the start-up pass (a clock set right later, say): kept until the next.
        store.observe(Activity("bridge", now - timedelta(days=31), {"event": "start"}))
        store.observe(Activity("bridge", now, {"event": "start"}))
        await wait_for(lambda: store.written == 2)
        long_ago = now - timedelta(days=99)
        assert len(read_history(path, long_ago)) == 2
        await trio.sleep(3601)  # simulated: the hourly pass comes due
        await wait_for(lambda: store.prunes == 2)
        assert store.pruned == 1
        assert [a.time > now - timedelta(seconds=1) for a in read_history(path, long_ago)] == [True]
        nursery.cancel_scope.cancel()


def test_observe_is_cheap_and_bounded_while_the_file_cannot_be_written(tmp_path: Path) -> None:
    def never(path: Path) -> sqlite3.Connection:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    store = HistoryStore(tmp_path / "h.sqlite3", 400, connect=never, max_pending=10)
    feed = ActivityFeed()
    feed.subscribe(store.observe)
    for counter in range(15):
        feed.record("write", ski=SKI, msg_counter=counter, value_W=1.0, approved=True)
    assert store.dropped == 5
    assert not (tmp_path / "h.sqlite3").exists()  # observe never touches the disk


async def test_a_full_disk_logs_one_error_per_minute_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """ENOSPC injected where the store opens the file; after it clears, every queued record
    is written, oldest first."""
    path = tmp_path / "history.sqlite3"
    disk_full = True

    def connect(path: Path) -> sqlite3.Connection:
        if disk_full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return connect_for_writing(path)

    store = HistoryStore(path, 400, connect=connect)
    records = every_kind()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        start = trio.current_time()
        for record in records:
            store.observe(record)
        # Twenty failed attempts (retries every few simulated seconds). Counted in attempts, not
        # in simulated time: the MockClock jumps while the worker thread works in real time, so
        # on a loaded machine a simulated minute may hold only a few attempts.
        await wait_for(lambda: store.failures >= 20, limit_s=30.0)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        elapsed = trio.current_time() - start
        assert elapsed >= 60  # at least a minute of retries...
        assert 2 <= len(errors) <= elapsed // 60 + 1, (elapsed, errors)  # ...one error a minute
        assert store.failures > len(errors)  # retried more often than logged
        assert "No space left on device" in errors[0]
        assert "11 record(s) waiting" in errors[0]
        disk_full = False
        await wait_for(lambda: store.written == len(records))
        nursery.cancel_scope.cancel()
    await store.aclose()
    assert read_history(path, T0) == records
    assert any("works again" in r.getMessage() for r in caplog.records)
