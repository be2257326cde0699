"""A misbehaving sidecar: unknown events, empty SKIs, NaN / negative / huge stored values.

Each is logged and ignored (or answered with a write-back); the bridge keeps running and never
publishes an invalid limit (running_bridge checks every publication).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import trio

from tests._bridge_fixtures import EG_SKI, limit_write, simulated_bridge

ONE_LIMIT = (limit_write(0.3, 2000.0),)


async def test_unknown_events_and_empty_skis_are_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with simulated_bridge(tmp_path, actions=ONE_LIMIT) as (sim, bridge, publications):
        await publications.wait_state("Limited")
        sim.inject_event("DataUpdateSomethingNew", EG_SKI)
        sim.inject_event("", EG_SKI)
        sim.inject_event("DataUpdateHeartbeat", "")
        sim.inject_event("WriteApprovalRequired", "")  # nothing pending
        sim.inject_event("DataUpdateLimit", "not-a-ski")
        await trio.sleep(0.5)
        assert publications.states == ["Init", "Limited"]
        assert bridge.connections == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("ignored unknown event 'DataUpdateSomethingNew'" in m for m in messages)
    assert any("ignored unknown event ''" in m for m in messages)


@pytest.mark.parametrize("value", [math.nan, -100.0, math.inf])
async def test_invalid_limit_read_from_the_sidecar_is_not_published(
    tmp_path: Path, value: float
) -> None:
    async with simulated_bridge(tmp_path, actions=ONE_LIMIT) as (sim, _, publications):
        await publications.wait_state("Limited")
        sim.overwrite_values(limit_value=value, limit_active=True)
        sim.inject_event("DataUpdateLimit", EG_SKI)
        await trio.sleep(0.5)
        assert [p.limit_W for p in publications.history] == [4200.0, 2000.0]


async def test_huge_values_from_the_sidecar_keep_the_bridge_sane(tmp_path: Path) -> None:
    device_max = {"lpc": {"failsafe_duration_max_s": 36000}}
    async with simulated_bridge(tmp_path, actions=ONE_LIMIT, config=device_max) as (
        sim,
        bridge,
        publications,
    ):
        await publications.wait_state("Limited")
        # A huge limit for 146 years: above max_nominal_power_W has no effect, but it is
        # a valid limit, published as it is, with its far end.
        sim.overwrite_values(limit_value=1e300, limit_duration_ns=2**62)
        sim.inject_event("DataUpdateLimit", EG_SKI)
        huge = await publications.wait_for(lambda p: p.limit_W == 1e300)
        assert huge.end_time is not None
        assert huge.end_time.year > huge.time.year + 100
        # A failsafe duration far beyond 24 h: rejected, the previous one written back.
        sim.overwrite_values(failsafe_duration_ns=10**18)
        sim.inject_event("DataUpdateFailsafeDurationMinimum", EG_SKI)
        await sim.wait_for_record(
            "cs_lpc.SetFailsafeDurationMinimum",
            lambda r: int(r.request["duration_nanoseconds"]) == 7200 * 10**9,
            start=len(sim.records),
        )
        # Within 2 h..24 h but above the device maximum: clamped and written back [LPC-022/5].
        sim.overwrite_values(failsafe_duration_ns=50000 * 10**9)
        sim.inject_event("DataUpdateFailsafeDurationMinimum", EG_SKI)
        await sim.wait_for_record(
            "cs_lpc.SetFailsafeDurationMinimum",
            lambda r: int(r.request["duration_nanoseconds"]) == 36000 * 10**9,
            start=len(sim.records),
        )
        assert bridge.runner.engine.failsafe_values.duration_s == 36000.0
        assert bridge.connections == 1
