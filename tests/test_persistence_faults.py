"""A state file that cannot be written (issue 13.4): a read-only folder, a full disk (ENOSPC).

The failure is logged once per change of its cause, the accepted failsafe values stay in force
in memory (published, written back to the sidecar at the next handshake), and they are stored
once writing works again, without a new value from the EG. Real faults: an immutable folder
(`chattr +i`, which stops root too; `chmod a-w` where the tests do not run as root) and a temp
file that is a symlink to /dev/full, whose writes fail with ENOSPC in the kernel.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tests._bridge_fixtures import simulated_bridge
from tests._util import read_only_folder, wait_until
from tools.hems_simulator import HemsSimulator

STATE = {"lpc": {"state_file": "state/state.json"}}


async def _settled(sim: HemsSimulator) -> None:
    """The EG is connected and the bridge has re-sent its local data for the EG's
    UseCaseSupportUpdate (ending with StartHeartbeat): from here on the EG's writes are not
    crossed by a SetFailsafe... of the bridge's older view."""
    await sim.wait_eg_connected()
    first = await sim.wait_for_record("cs_lpc.StartHeartbeat")
    await sim.wait_for_record("cs_lpc.StartHeartbeat", start=first.index + 1)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "cannot store failsafe values" in r.getMessage()
    ]


def _stored(path: Path) -> dict[str, float] | None:
    try:
        data: dict[str, float] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


async def test_read_only_state_folder_keeps_values_in_memory_and_stores_them_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    state_file = folder / "state.json"
    caplog.set_level(logging.DEBUG, logger="eebus_bridge.lpc")
    async with simulated_bridge(tmp_path, config=STATE) as (sim, _, publications):
        await _settled(sim)
        with read_only_folder(folder):
            sim.write_failsafe_limit(3000.0)
            await publications.wait_for(lambda p: p.limit_W == 3000.0)  # published at once
            await wait_until(lambda: len(_errors(caplog)) == 1)
            sim.write_failsafe_limit(3100.0)
            await publications.wait_for(lambda p: p.limit_W == 3100.0)
            # Retries (1 s, then 2 s) fail for the same cause: nothing more is logged.
            await wait_until(lambda: caplog.text.count("still not stored") >= 2, limit_s=10)
            (error,) = _errors(caplog)
            assert str(state_file) in error
            assert "3000 W" in error
            assert not state_file.exists()
        # Writable again: the latest values are stored without a new write from the EG.
        await wait_until(
            lambda: (_stored(state_file) or {}).get("failsafe_limit_W") == 3100.0, limit_s=15
        )
        await wait_until(lambda: "writing works again" in caplog.text)
        assert len(_errors(caplog)) == 1
        assert [p.limit_W for p in publications.history] == [4200.0, 3000.0, 3100.0]


async def test_disk_full_is_logged_once_per_cause_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    state_file = folder / "state.json"
    temp = folder / ".state.json.tmp"  # failsafe_store writes here, then renames
    caplog.set_level(logging.DEBUG, logger="eebus_bridge.lpc")
    async with simulated_bridge(tmp_path, config=STATE) as (sim, _, publications):
        await _settled(sim)
        temp.symlink_to("/dev/full")
        sim.write_failsafe_limit(2500.0)
        await publications.wait_for(lambda p: p.limit_W == 2500.0)
        await wait_until(lambda: len(_errors(caplog)) == 1)
        assert os.strerror(28) in _errors(caplog)[0]  # ENOSPC: No space left on device

        # A different cause is a change: logged once more.
        temp.unlink()
        with read_only_folder(folder):
            await wait_until(lambda: len(_errors(caplog)) == 2, limit_s=10)
        await wait_until(
            lambda: (_stored(state_file) or {}).get("failsafe_limit_W") == 2500.0, limit_s=15
        )
        await wait_until(lambda: "writing works again" in caplog.text)
        assert len(_errors(caplog)) == 2
