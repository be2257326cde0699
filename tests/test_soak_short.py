"""The soak's cases (tools/soak.py, issue 13.4), a few rounds each: a sidecar SIGKILLed 3
times, mosquitto restarted twice under the everest-api sink, the state file unwritable twice
(immutable folder, ENOSPC), garbage from the sidecar with 2 cut streams. Every case checks its
promises round by round (it raises SoakFailure otherwise); here also that the bridge process
leaked no child process, file descriptor or thread between the first round and the last.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._broker import requires_mosquitto
from tools.soak import (
    CaseResult,
    broker_restarts,
    sidecar_garbage,
    sidecar_kills,
    state_kept,
    storage_faults,
)


def assert_no_leaks(result: CaseResult, rounds: int) -> None:
    assert len(result.recovery_s) == rounds
    leaks = result.leaks()
    assert leaks["processes"] == 0, result.as_dict()
    assert leaks["fds"] == 0, result.as_dict()
    # Trio keeps an idle worker thread for 10 s after a blocking call, so one more or fewer
    # may be alive at either count; a leak would grow by a thread per round.
    assert abs(leaks["threads"]) <= 1, result.as_dict()


async def test_sidecar_sigkill_3_times(tmp_path: Path) -> None:
    assert_no_leaks(await sidecar_kills(tmp_path, 3), 3)


@requires_mosquitto
async def test_broker_restart_2_times(tmp_path: Path) -> None:
    assert_no_leaks(await broker_restarts(tmp_path, 2), 2)


async def test_state_folder_read_only_then_disk_full(tmp_path: Path) -> None:
    assert_no_leaks(await storage_faults(tmp_path, 2), 2)


async def test_sidecar_garbage_2_rounds(tmp_path: Path) -> None:
    assert_no_leaks(await sidecar_garbage(tmp_path, 2), 2)


@pytest.mark.parametrize("states", [["Init", "Limited", "Init"], ["Limited"], []])
def test_a_second_init_is_a_lost_state(states: list[str]) -> None:
    assert not state_kept(states)
