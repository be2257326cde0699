"""The history store inside the real bridge, against the HEMS simulator.

What is checked here: a run records every activity kind (with the spec rule IDs of the state
changes) in a real SQLite file; a history folder that is read-only or full never stops the
bridge from publishing (one error line, not one per batch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from eebus_bridge.history import read_history
from tests._bridge_fixtures import EG_SKI, limit_write, simulated_bridge
from tests._util import wait_until

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def _history(path: Path) -> list[tuple[str, dict[str, object]]]:
    return [(a.kind, a.fields) for a in read_history(path, LONG_AGO)]


async def test_a_run_records_every_kind_with_rule_ids(tmp_path: Path) -> None:
    """Controlbox preset (100 W), the EG writes a failsafe limit, its heartbeat stops
    (-> Failsafe [LPC-911]) and comes back (-> Unlimited/autonomous [LPC-921])."""
    history = tmp_path / "history.sqlite3"
    async with simulated_bridge(
        tmp_path,
        actions=None,
        time_scale=0.05,
        heartbeat_window_s=2.0,
        requires_trust=True,
        config={"eebus": {"ems_ski_allowlist": [EG_SKI]}},
    ) as (sim, _, publications):
        await publications.wait_state("Limited")
        sim.write_failsafe_limit(3500.0)
        sim.stop_eg_heartbeat()
        await publications.wait_state("Failsafe", limit_s=8)
        sim.start_eg_heartbeat()
        await publications.wait_state("Unlimited/autonomous", limit_s=8)
        # Everything so far is on disk within a second, while the bridge runs.
        await wait_until(
            lambda: any(
                kind == "state" and fields["rule"] == "LPC-921"
                for kind, fields in _history(history)
            ),
            limit_s=10,
        )
    records = _history(history)
    kinds = {kind for kind, _ in records}
    # sidecar start/exit/restart need a managed sidecar: see test_history_process.py.
    assert kinds >= {
        "bridge",
        "connection",
        "eg",
        "discovery",
        "write",
        "failsafe_write",
        "state",
        "publication",
        "delivery",
        "sink",
    }
    assert [f["event"] for k, f in records if k == "bridge"] == ["start", "stop"]
    transitions = [(f["old"], f["new"], f["rule"]) for k, f in records if k == "state"]
    assert transitions == [
        ("Init", "Limited", "LPC-904"),
        ("Limited", "Failsafe", "LPC-911"),
        ("Failsafe", "Unlimited/autonomous", "LPC-921"),
    ]
    writes = [f for k, f in records if k == "write"]
    assert writes[0]["ski"] == EG_SKI
    assert writes[0]["value_W"] == 100.0
    assert writes[0]["approved"] is True
    failsafe_writes = [f for k, f in records if k == "failsafe_write"]
    assert failsafe_writes[0]["value"] == 3500.0
    assert failsafe_writes[0]["accepted"] is True
    published = [(f["state"], f["limit_W"]) for k, f in records if k == "publication"]
    assert published == [
        ("Init", 4200.0),
        ("Limited", 100.0),
        ("Failsafe", 3500.0),
        ("Unlimited/autonomous", None),
    ]
    eg_events = [f["event"] for k, f in records if k == "eg"]
    assert "heartbeat_lost" in eg_events
    assert "heartbeat_back" in eg_events
    assert any(f["ok"] and f["sink"] for k, f in records if k == "delivery")


# --------------------------------------------------------------------------- broken folders


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted on `folder` (needs root; the test skips without it)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _history_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "eebus_bridge.history" and r.levelno >= logging.ERROR
    ]


async def _publishes_while_history_fails(
    tmp_path: Path,
    history_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Limits keep flowing while the history cannot be written; one error line, not one per
    failed batch."""
    caplog.set_level(logging.INFO)
    async with simulated_bridge(
        tmp_path,
        actions=(limit_write(0.3, 2000.0),),
        config={"history": {"path": str(history_path)}},
    ) as (sim, bridge, publications):
        await publications.wait_state("Limited")
        assert bridge.history is not None
        for value in (1500.0, 900.0, 600.0):
            failures = bridge.history.failures
            sim.send_limit(value)
            await publications.wait_for(lambda p, value=value: p.limit_W == value)
            await wait_until(
                lambda failures=failures: bridge.history.failures > failures, limit_s=15
            )
    assert [p.limit_W for p in publications.history] == [4200.0, 2000.0, 1500.0, 900.0, 600.0]
    errors = _history_errors(caplog)
    assert len(errors) == 1, errors
    assert str(history_path) in errors[0]


async def test_a_full_disk_never_stops_publishing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real ENOSPC: a 64 KiB tmpfs, filled up before the bridge starts."""
    with _tmpfs(tmp_path / "small", "64k") as small:
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as file:
            while True:
                file.write(b"\0" * 4096)
                file.flush()
        await _publishes_while_history_fails(tmp_path, small / "history.sqlite3", caplog)
        errors = _history_errors(caplog)
        assert "full" in errors[0] or "space" in errors[0]


def _remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def _existing_history(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE activity (id INTEGER PRIMARY KEY)")


async def test_a_read_only_history_file_and_folder_never_stop_publishing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        _existing_history(folder / "history.sqlite3")
        (folder / "history.sqlite3").chmod(0o444)
        folder.chmod(0o555)
        try:
            await _publishes_while_history_fails(tmp_path, folder / "history.sqlite3", caplog)
        finally:
            folder.chmod(0o755)
        return
    # root writes through file modes: a file system mounted read-only stops it too.
    with _tmpfs(folder, "4m"):
        _existing_history(folder / "history.sqlite3")
        _remount_read_only(folder)
        await _publishes_while_history_fails(tmp_path, folder / "history.sqlite3", caplog)


async def test_a_history_file_that_is_not_a_database_never_stops_publishing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "history.sqlite3"
    broken.write_bytes(b"this is not an SQLite database, just a broken file\n" * 200)
    await _publishes_while_history_fails(tmp_path, broken, caplog)
    assert broken.read_bytes().startswith(b"this is not")  # left as it was, for inspection


async def test_history_can_be_switched_off(tmp_path: Path) -> None:
    async with simulated_bridge(
        tmp_path, actions=(limit_write(0.3, 2000.0),), config={"history": {"enabled": False}}
    ) as (_, bridge, publications):
        await publications.wait_state("Limited")
        assert bridge.history is None
        await trio.sleep(0.6)  # longer than a batch: a store would have written by now
    assert not (tmp_path / "history.sqlite3").exists()


async def test_a_locked_history_file_does_not_delay_failsafe(tmp_path: Path) -> None:
    """Another process holds the file's write lock (a backup, a long query): the writer thread
    waits for it, while the heartbeat deadline still fires on time [LPC-911]."""
    history = tmp_path / "history.sqlite3"
    async with simulated_bridge(
        tmp_path, heartbeat_window_s=2.0, actions=(limit_write(0.3, 2000.0),)
    ) as (sim, _, publications):
        await publications.wait_state("Limited")
        await wait_until(lambda: ("publication", "Limited") in _published(history), limit_s=10)
        with contextlib.closing(sqlite3.connect(history, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # in WAL mode: blocks every other writer
            sim.stop_eg_heartbeat()
            stopped_at = trio.current_time()
            await publications.wait_state("Failsafe", limit_s=6)
            assert trio.current_time() - stopped_at <= 2.0 + 0.5
            await trio.sleep(1.0)  # two batch periods: the writer has tried and waits
            assert ("publication", "Failsafe") not in _published(history)
            other.execute("ROLLBACK")
        await wait_until(lambda: ("publication", "Failsafe") in _published(history), limit_s=20)


def _published(path: Path) -> list[tuple[str, object]]:
    return [("publication", f["state"]) for k, f in _history(path) if k == "publication"]


async def test_shutdown_is_not_held_up_by_a_locked_history_file(tmp_path: Path) -> None:
    """The last write at shutdown gives up after a moment: the bridge stops within its 2 s."""
    history = tmp_path / "history.sqlite3"
    with contextlib.ExitStack() as stack:
        async with simulated_bridge(tmp_path, actions=(limit_write(0.3, 2000.0),)) as (
            sim,
            _,
            publications,
        ):
            await publications.wait_state("Limited")
            await wait_until(lambda: ("publication", "Limited") in _published(history), limit_s=10)
            other = stack.enter_context(
                contextlib.closing(sqlite3.connect(history, isolation_level=None))
            )
            other.execute("BEGIN EXCLUSIVE")
            sim.send_limit(1500.0)  # records that now wait for the lock
            await publications.wait_for(lambda p: p.limit_W == 1500.0)
            leaving = trio.current_time()
        assert trio.current_time() - leaving < 2.0
    assert ("publication", "Limited") in _published(history)  # the file is fine afterwards
