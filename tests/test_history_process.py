"""The history of a real `eebus-bridge run` process that is killed with SIGKILL.

"A crash loses at most the last second of history, never the file": after kill -9, the file
opens, passes SQLite's integrity check, and holds every record older than one second before the
kill (publications compared with the jsonl sink's lines, sidecar events with what happened).
The `eebus-bridge history` command then reads it in a process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from eebus_bridge.history import read_history
from tests._bridge_fixtures import ROOT
from tests._util import wait_until
from tests.test_runtime_process import bridge_process

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_kill_9_keeps_the_file_and_everything_older_than_a_second(tmp_path: Path) -> None:
    history = tmp_path / "history.sqlite3"
    async with bridge_process(tmp_path) as bridge:
        await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
        (first,) = bridge.sidecar_pids
        os.kill(first, signal.SIGKILL)  # sidecar exit and restart go into the history too
        await wait_until(lambda: len(bridge.sidecar_pids) == 2, limit_s=10)
        await wait_until(lambda: len(bridge.records("StartService")) == 2, limit_s=10)
        await wait_until(lambda: bridge.states()[-1] == "Limited", limit_s=10)
        await trio.sleep(1.5)  # everything so far is now older than a second
        killed_at = datetime.now(UTC)
        bridge.process.kill()
        await bridge.process.wait()
        published = bridge.publications()

    with sqlite3.connect(f"file:{history}?mode=ro", uri=True) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    records = read_history(history, LONG_AGO)
    assert all(r.time < killed_at for r in records)
    settled = killed_at - timedelta(seconds=1)
    expected = [(p["state"], _parse(p["time"])) for p in published if _parse(p["time"]) < settled]
    recorded = [(r.fields["state"], r.time) for r in records if r.kind == "publication"]
    assert [state for state, _ in expected][:2] == ["Init", "Limited"]
    assert [state for state, _ in recorded[: len(expected)]] == [s for s, _ in expected]
    for (_, sink_time), (_, history_time) in zip(expected, recorded, strict=False):
        assert abs((sink_time - history_time).total_seconds()) < 0.5
    sidecar_events = [r.fields["event"] for r in records if r.kind == "sidecar"]
    assert sidecar_events == ["start", "exit", "restart", "start"]
    bridge_events = [r.fields["event"] for r in records if r.kind == "bridge"]
    assert bridge_events == ["start"]  # killed: no "stop"

    # The CLI reads the file the killed bridge left (its own process, like a user would).
    listing = await trio.run_process(
        [
            sys.executable,
            "-m",
            "eebus_bridge",
            "history",
            "-c",
            str(tmp_path / "bridge.toml"),
            "--since",
            "1h",
            "--kind",
            "states",
            "--format",
            "json",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert listing.returncode == 0, listing.stderr
    states = json.loads(listing.stdout)
    transitions = [(s["fields"]["old"], s["fields"]["new"], s["fields"]["rule"]) for s in states]
    assert transitions[0] == ("Init", "Limited", "LPC-904")
    assert transitions == [
        (r.fields["old"], r.fields["new"], r.fields["rule"]) for r in records if r.kind == "state"
    ]
