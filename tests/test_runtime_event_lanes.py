"""Issue 13 items 1 and 2 end to end: approvals have their own lane, unattributable events are
dropped before any RPC.

Real gRPC against the in-process simulator; the simulator holds one RPC's answer back
(`HemsSimulator.hold_rpc`) the way a slow sidecar would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from tests._bridge_fixtures import EG_SKI, OTHER_SKI, limit_write, simulated_bridge
from tests._util import wait_until
from tools.hems_simulator import HemsSimulator

READS = (
    "cs_lpc.ConsumptionLimit",
    "cs_lpc.FailsafeConsumptionActivePowerLimit",
    "cs_lpc.FailsafeDurationMinimum",
    "cs_lpc.PendingConsumptionLimit",
    "cs_lpc.IsHeartbeatWithinDuration",
)


def _reads(sim: HemsSimulator) -> list[str]:
    return [r.method for r in sim.records if r.method in READS]


async def _local_data_resent(sim: HemsSimulator) -> None:
    """Until the bridge has answered the EG's arrival (UseCaseSupportUpdate) by writing its
    local data again; the last of those writes is the failsafe duration's."""
    await wait_until(
        lambda: [r.method for r in sim.records].count("cs_lpc.SetFailsafeDurationMinimum") >= 2
    )


async def test_a_write_is_answered_while_a_consumption_limit_read_is_held(tmp_path: Path) -> None:
    """spec/lpc.md: every pending write gets an answer well within 10 s, also while other work
    is in flight. The read is held for (almost) the whole rpc_timeout_s."""
    rpc_timeout_s = 3.0
    async with simulated_bridge(tmp_path, config={"eebus": {"rpc_timeout_s": rpc_timeout_s}}) as (
        sim,
        bridge,
        publications,
    ):
        with trio.fail_after(10):
            await bridge.connected.wait()
        await sim.wait_eg_connected()
        await sim.wait_for_event("DataUpdateHeartbeat")
        hold = sim.hold_rpc("cs_lpc.ConsumptionLimit", rpc_timeout_s - 0.5)
        sim.send_limit(2000.0)
        with trio.fail_after(10):
            await hold.started.wait()
        held_since = trio.current_time()
        start = len(sim.approvals)
        sim.send_limit(3000.0)
        answer = await sim.wait_for_approval(start=start, timeout=10)
        assert answer.approve
        assert answer.limit["value"] == 3000.0
        assert not hold.finished.is_set(), "the answer waited for the held read"
        assert answer.t - held_since < 1.0
        # The held read (2000 W, the value when it arrived) is still applied, then the read of
        # the second write's DataUpdateLimit: the engine sees them in the order they were read.
        await publications.wait_for(lambda p: p.limit_W == 3000.0, limit_s=10)
        limits = [p.limit_W for p in publications.history]
        assert limits == [4200.0, 2000.0, 3000.0]
        assert bridge.connections == 1


async def test_events_without_a_valid_ski_are_dropped_before_any_rpc(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with simulated_bridge(tmp_path) as (sim, bridge, publications):
        with trio.fail_after(10):
            await bridge.connected.wait()
        await sim.wait_eg_connected()
        # Else the re-sent local data may overwrite the values set here (seen with grpcio).
        await _local_data_resent(sim)
        reads_before = _reads(sim)
        sim.overwrite_values(limit_value=1500.0, limit_active=True, failsafe_limit=3000.0)
        for ski in ("", "not-a-ski", "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f0", "x" * 40):
            for name in (
                "DataUpdateLimit",
                "DataUpdateFailsafeConsumptionActivePowerLimit",
                "DataUpdateFailsafeDurationMinimum",
                "WriteApprovalRequired",
                "DataUpdateHeartbeat",
                "UseCaseSupportUpdate",
            ):
                sim.inject_event(name, ski)
        # A valid event after them shows the bridge has read past every malformed one; a new
        # FCAPL in Init is published at once.
        sim.inject_event("DataUpdateFailsafeConsumptionActivePowerLimit", EG_SKI)
        await publications.wait_for(lambda p: p.limit_W == 3000.0, limit_s=10)
        assert _reads(sim) == [*reads_before, "cs_lpc.FailsafeConsumptionActivePowerLimit"]
        assert [(p.state, p.limit_W) for p in publications.history] == [
            ("Init", 4200.0),
            ("Init", 3000.0),
        ]
        status = bridge.runner.engine.status(trio.current_time())
        assert status.state.value == "Init"
        assert status.active_ski == EG_SKI  # the valid event's EG, not a malformed one
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, warnings  # rate-limited: 24 events, one line
    assert "SKI" in warnings[0]


async def test_data_events_of_another_eg_are_dropped_and_its_writes_denied_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    long_heartbeat = {"timing": {"heartbeat_timeout_s": 60.0}}
    async with simulated_bridge(
        tmp_path, actions=(limit_write(0.3, 1000.0),), config=long_heartbeat
    ) as (sim, bridge, publications):
        await publications.wait_state("Limited")
        reads_before = _reads(sim)
        for _ in range(3):
            sim.inject_event("DataUpdateLimit", OTHER_SKI)
            sim.inject_event("DataUpdateFailsafeDurationMinimum", OTHER_SKI)
        sim.inject_event("DataUpdateHeartbeat", OTHER_SKI)
        # The other EG writes: answered at once (denied, naming the active EG), no time-out.
        sim.set_eg_ski(OTHER_SKI)
        await sim.wait_eg_connected()
        start = len(sim.approvals)
        sim.send_limit(500.0)
        denied = await sim.wait_for_approval(start=start, timeout=10)
        assert denied.approve is False
        assert not denied.auto_rejected
        assert EG_SKI in denied.reason
        # Nothing was read for the dropped data events: only the write's pending read.
        assert [m for m in _reads(sim) if m != "cs_lpc.PendingConsumptionLimit"] == [
            m for m in reads_before if m != "cs_lpc.PendingConsumptionLimit"
        ]
        assert publications.states == ["Init", "Limited"]
        status = bridge.runner.engine.status(trio.current_time())
        assert status.active_ski == EG_SKI
        assert status.state.value == "Limited"
    dropped = [
        r.getMessage()
        for r in caplog.records
        if OTHER_SKI in r.getMessage() and "dropped" in r.getMessage()
    ]
    assert len(dropped) == 1, dropped  # once per EG per minute


async def test_an_eg_write_during_the_local_data_resend_is_not_overwritten(tmp_path: Path) -> None:
    """Found by the soak: on UseCaseSupportUpdate the bridge re-sends its local data; a write the
    EG makes meanwhile was approved and applied, then the bridge's SetConsumptionLimit (its view
    from before the write) overwrote it in the sidecar, and the write was lost. The limit the
    bridge re-sends must never be older than a write it approved."""
    async with simulated_bridge(tmp_path) as (sim, bridge, publications):
        with trio.fail_after(10):
            await bridge.connected.wait()
        await sim.wait_eg_connected()
        await sim.wait_for_event("DataUpdateHeartbeat")
        # The next re-send of the local data stalls after its first RPC...
        hold = sim.hold_rpc("cs_lpc.SetConsumptionNominalMax", 0.6)  # < rpc_timeout_s
        sim.reconnect_eg()  # ...which a UseCaseSupportUpdate starts.
        with trio.fail_after(10):
            await hold.started.wait()
        start = len(sim.approvals)
        sim.send_limit(2000.0)  # the EG writes while the re-send is stalled
        answer = await sim.wait_for_approval(start=start, timeout=10)
        assert answer.approve
        with trio.fail_after(10):
            await hold.finished.wait()
        limited = await publications.wait_for(lambda p: p.limit_W == 2000.0, limit_s=10)
        assert limited.state == "Limited"
        await trio.sleep(0.5)  # the rest of the re-send, and any read after it
        assert sim.limit is not None
        assert sim.limit.value == 2000.0, "the EG's write was overwritten by an older view"
        assert sim.limit.is_active
        assert publications.history[-1].limit_W == 2000.0
