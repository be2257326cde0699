"""Events, discovery and the simulated energy guard (spec/wire.md, scenarios, presets)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from eebus_bridge.generated.control_service import (
    ControlServiceStub,
    DiscoveryEvent,
    DiscoveryEventType,
    RegisterRemoteSkiRequest,
    SubscribeUseCaseEventsResponse,
    UseCaseActorTypeEnum,
    UseCaseNameTypeEnum,
)
from eebus_bridge.generated.cs_lpc import (
    ApproveOrDenyConsumptionLimitRequest,
    ControllableSystemLpcControlStub,
)
from tests._sim_fixtures import aio, event_stream, lpc_handshake, open_grpc_channel, open_stream
from tools.hems_simulator import AUTO_REJECT_REASON, HemsSimulator, open_hems_simulator

CONTROLBOX_SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"


async def next_item(receive: trio.MemoryReceiveChannel[Any]) -> Any:
    """The next stream message within 5 s (the stream's exception, if it failed)."""
    with trio.fail_after(5):
        return unwrap(await receive.receive())


def unwrap(item: Any) -> Any:
    if isinstance(item, BaseException):
        raise item
    return item


def event_name(event: SubscribeUseCaseEventsResponse) -> str:
    assert event.use_case_event is not None
    return event.use_case_event.event


@asynccontextmanager
async def running_sidecar(
    sim: HemsSimulator, **config: Any
) -> AsyncIterator[tuple[ControlServiceStub, ControllableSystemLpcControlStub]]:
    """Handshake up to Running (events are not subscribed here)."""
    async with open_grpc_channel(sim.port) as channel:
        control = ControlServiceStub(channel)
        async with lpc_handshake(control, **config) as lpc:
            await aio(control.start_service)()
            yield control, lpc


async def test_controlbox_preset_with_a_scripted_client(autojump_clock: object) -> None:
    """The preset's real timings on a virtual clock: one 100 W limit, 3723 s, ever."""
    limits = []
    names: list[str] = []
    async with open_hems_simulator("controlbox") as sim, open_grpc_channel(sim.port) as channel:
        control = ControlServiceStub(channel)
        async with lpc_handshake(control) as lpc, open_stream(event_stream(control)) as events:
            await aio(control.start_service)()
            await aio(lpc.start_heartbeat)()
            with trio.move_on_after(600):
                while True:
                    event = unwrap(await events.receive())
                    names.append(event_name(event))
                    assert event.remote_ski == CONTROLBOX_SKI
                    if event_name(event) == "WriteApprovalRequired":
                        pending = (await aio(lpc.pending_consumption_limit)()).load_limits
                        for counter in pending:
                            await aio(lpc.approve_or_deny_consumption_limit)(
                                ApproveOrDenyConsumptionLimitRequest(counter, True, "")
                            )
                    elif event_name(event) == "DataUpdateLimit":
                        limits.append((await aio(lpc.consumption_limit)()).load_limit)
    assert names[0] == "UseCaseSupportUpdate"
    assert names.count("WriteApprovalRequired") == 1
    assert names.count("DataUpdateHeartbeat") == 9  # 60 s period over 600 s after a 1 s delay
    assert len(limits) == 1
    limit = limits[0]
    assert limit is not None
    assert (limit.value, limit.is_active) == (100.0, True)
    assert abs(limit.duration_nanoseconds / 1e9 - 3723) <= 1
    approval = sim.approvals[0]
    assert (approval.approve, approval.auto_rejected, approval.limit["value"]) == (True, False, 100)
    first_connect = sim.events[0].t
    write_time = next(e.t for e in sim.events if e.name == "WriteApprovalRequired")
    assert write_time - first_connect == pytest.approx(5.0)


async def test_unanswered_write_is_rejected_after_10_s(autojump_clock: object) -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (_, lpc),
    ):
        await sim.wait_eg_connected()
        counter = sim.send_limit(500, active=True, duration_s=30)
        written = trio.current_time()
        assert set((await aio(lpc.pending_consumption_limit)()).load_limits) == {counter}
        approval = await sim.wait_for_approval(timeout=20)
        assert approval.t - written == pytest.approx(10.0)
        assert (approval.msg_counter, approval.approve, approval.auto_rejected) == (
            counter,
            False,
            True,
        )
        assert approval.reason == AUTO_REJECT_REASON
        assert (await aio(lpc.pending_consumption_limit)()).load_limits == {}
        limit = (await aio(lpc.consumption_limit)()).load_limit
        assert limit is not None
        assert limit.value == 0.0
        assert not [e for e in sim.events if e.name == "DataUpdateLimit"]


async def test_approve_deny_and_unknown_counters() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (_, lpc),
    ):
        await sim.wait_eg_connected()
        denied = sim.send_limit(-1, active=True)
        approved = sim.send_limit(2500, active=False, duration_s=0)
        pending = (await aio(lpc.pending_consumption_limit)()).load_limits
        assert set(pending) == {denied, approved}
        assert (pending[denied].value, pending[denied].is_active) == (-1, True)
        assert pending[denied].is_changeable is False
        await aio(lpc.approve_or_deny_consumption_limit)(
            ApproveOrDenyConsumptionLimitRequest(denied, False, "LPC-001: must be >= 0 W")
        )
        await aio(lpc.approve_or_deny_consumption_limit)(
            ApproveOrDenyConsumptionLimitRequest(99999, True, "")
        )
        assert len(sim.approvals) == 1
        assert (sim.approvals[0].approve, sim.approvals[0].reason) == (
            False,
            "LPC-001: must be >= 0 W",
        )
        assert not [e for e in sim.events if e.name == "DataUpdateLimit"]
        await aio(lpc.approve_or_deny_consumption_limit)(
            ApproveOrDenyConsumptionLimitRequest(approved, True, "")
        )
        await sim.wait_for_event("DataUpdateLimit")
        limit = (await aio(lpc.consumption_limit)()).load_limit
        assert limit is not None
        assert (limit.value, limit.is_active, limit.is_changeable) == (2500, False, True)


async def test_events_wait_for_a_subscriber_and_carry_the_eg() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (control, _),
    ):
        await sim.wait_eg_connected()
        sim.send_limit(100)
        sim.send_eg_heartbeat()
        async with open_stream(event_stream(control)) as events:
            received = [await next_item(events) for _ in range(3)]
    assert [event_name(event) for event in received] == [
        "UseCaseSupportUpdate",
        "WriteApprovalRequired",
        "DataUpdateHeartbeat",
    ]
    for event in received:
        assert event.remote_ski == CONTROLBOX_SKI
        assert event.remote_entity_address is not None
        assert event.remote_entity_address.entity_address == [1]
        assert event.use_case_event is not None
        assert event.use_case_event.use_case is not None
        assert event.use_case_event.use_case.actor is UseCaseActorTypeEnum.ControllableSystem
        assert (
            event.use_case_event.use_case.name is UseCaseNameTypeEnum.limitationOfPowerConsumption
        )


async def test_two_subscribers_split_the_events() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (control, _),
    ):
        await sim.wait_eg_connected()
        async with open_stream(event_stream(control)) as first:
            assert event_name(await next_item(first)) == "UseCaseSupportUpdate"
            async with open_stream(event_stream(control)) as second:
                got_first, got_second = await _split_four_heartbeats(sim, first, second)
    assert {event_name(e) for e in got_first + got_second} == {"DataUpdateHeartbeat"}


async def _split_four_heartbeats(
    sim: HemsSimulator,
    first: trio.MemoryReceiveChannel[Any],
    second: trio.MemoryReceiveChannel[Any],
) -> tuple[list[Any], list[Any]]:
    for _ in range(4):
        # One at a time, so each handler is back at the channel (like the goroutines blocked
        # on the Go channel) before the next event comes: then they take turns.
        await sim.wait_for_subscribers(2)
        sim.send_eg_heartbeat()
    got_first = [await next_item(first) for _ in range(2)]
    got_second = [await next_item(second) for _ in range(2)]
    with trio.move_on_after(0.2):
        extra = await first.receive()
        pytest.fail(f"more events than produced: {extra}")
    return got_first, got_second


@pytest.mark.parametrize("lose", [True, False])
async def test_the_event_after_a_stream_break(lose: bool) -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0, lose_event_on_stream_break=lose) as sim,
        running_sidecar(sim) as (control, _),
    ):
        await sim.wait_eg_connected()
        async with open_stream(event_stream(control)) as events:
            assert event_name(await next_item(events)) == "UseCaseSupportUpdate"
            await sim.wait_for_subscribers(1)
        await sim.wait_for_subscribers(0)  # the server saw the break
        sim.write_failsafe_limit(3000)  # produced while nobody reads
        sim.send_eg_heartbeat()
        async with open_stream(event_stream(control)) as events:
            first = event_name(await next_item(events))
    lost = [e.name for e in sim.events if e.outcome == "lost"]
    if lose:
        assert lost == ["DataUpdateFailsafeConsumptionActivePowerLimit"]
        assert first == "DataUpdateHeartbeat"
    else:
        assert lost == []
        assert first == "DataUpdateFailsafeConsumptionActivePowerLimit"


async def test_discovery_replays_visible_egs_then_goes_live() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0.05) as sim,
        running_sidecar(sim) as (control, _),
        open_stream(lambda: control.subscribe_discovery_events()) as live,
    ):
        await sim.wait_eg_connected()
        discovered: DiscoveryEvent = await next_item(live)
        assert discovered.type is DiscoveryEventType.DISCOVERED
        assert (discovered.remote_ski, discovered.is_trusted) == (CONTROLBOX_SKI, False)
        assert (discovered.brand, discovered.model) == ("Demo", "ControlBox")
        assert discovered.ship_identifier == "Demo-ControlBox-123456789"
        assert discovered.device_type == "EnergyManagementSystem"
        await aio(control.register_remote_ski)(
            RegisterRemoteSkiRequest(remote_ski=CONTROLBOX_SKI.upper())
        )
        async with open_stream(lambda: control.subscribe_discovery_events()) as late:
            replay: DiscoveryEvent = await next_item(late)
            assert (replay.type, replay.is_trusted) == (DiscoveryEventType.DISCOVERED, True)
            sim.disconnect_eg()
            for stream in (live, late):
                removed: DiscoveryEvent = await next_item(stream)
                assert (removed.type, removed.remote_ski) == (
                    DiscoveryEventType.REMOVED,
                    CONTROLBOX_SKI,
                )
            sim.reconnect_eg()
            again: DiscoveryEvent = await next_item(late)
            assert again.type is DiscoveryEventType.DISCOVERED


async def test_discovery_buffer_keeps_32_events_per_subscriber() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (control, _),
    ):
        await sim.wait_eg_connected()
        async with open_stream(lambda: control.subscribe_discovery_events()) as live:
            assert (await next_item(live)).type is DiscoveryEventType.DISCOVERED
            sim.freeze()  # the handler stops draining its buffer
            for _ in range(20):
                sim.disconnect_eg()
                sim.reconnect_eg()
            sim.unfreeze()
            received = []
            with trio.move_on_after(0.5):
                while True:
                    received.append(await next_item(live))
    assert len(received) == 32
    dropped = [e for e in sim.events if e.stream == "discovery" and e.outcome == "dropped"]
    assert len(dropped) == 40 - 32


async def test_old_sidecar_has_no_discovery() -> None:
    async with (
        open_hems_simulator(discovery=False) as sim,
        open_grpc_channel(sim.port) as channel,
    ):
        control = ControlServiceStub(channel)

        async def first() -> object:
            async for event in control.subscribe_discovery_events():
                return event
            return None

        with pytest.raises(GRPCError) as caught:
            await aio(first)()
        assert caught.value.status is Status.UNIMPLEMENTED
        record = await sim.wait_for_record("SubscribeDiscoveryEvents")
        assert record.ok is False


async def test_discovery_needs_ready_or_running() -> None:
    async with open_hems_simulator() as sim, open_grpc_channel(sim.port) as channel:
        control = ControlServiceStub(channel)

        async def first() -> object:
            async for event in control.subscribe_discovery_events():
                return event
            return None

        with pytest.raises(GRPCError, match="Service must be in ready or running state"):
            await aio(first)()


async def test_heartbeat_window(autojump_clock: object) -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        open_grpc_channel(sim.port) as channel,
    ):
        control = ControlServiceStub(channel)
        async with lpc_handshake(control) as lpc:

            async def within() -> bool:
                return (await aio(lpc.is_heartbeat_within_duration)()).is_within_duration

            assert not await within()  # no EG yet
            await aio(control.start_service)()
            await sim.wait_eg_connected()
            connected = trio.current_time()
            assert await within()  # the heartbeat read at connection time counts ...
            assert not [e for e in sim.events if e.name == "DataUpdateHeartbeat"]  # ... silently
            sim.stop_eg_heartbeat()
            await trio.sleep_until(connected + 119.5)
            assert await within()
            await trio.sleep_until(connected + 120.5)
            assert not await within()
            sim.start_eg_heartbeat()
            assert await within()
            assert [e.name for e in sim.events if e.name == "DataUpdateHeartbeat"] == [
                "DataUpdateHeartbeat"
            ]


async def test_eg_clock_skew_shifts_the_heartbeat_window(autojump_clock: object) -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0, clock_skew_s=-100) as sim,
        running_sidecar(sim) as (_, lpc),
    ):
        await sim.wait_eg_connected()
        await trio.sleep(25)
        assert not (await aio(lpc.is_heartbeat_within_duration)()).is_within_duration


async def test_eg_failsafe_writes_are_not_range_checked() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (_, lpc),
    ):
        await sim.wait_eg_connected()
        sim.write_failsafe_limit(-5)
        sim.write_failsafe_duration(60)
        await sim.wait_for_event("DataUpdateFailsafeConsumptionActivePowerLimit")
        await sim.wait_for_event("DataUpdateFailsafeDurationMinimum")
        assert (await aio(lpc.failsafe_consumption_active_power_limit)()).limit == -5
        duration = await aio(lpc.failsafe_duration_minimum)()
        assert duration.duration_nanoseconds == 60 * 10**9


async def test_eg_that_needs_trust_connects_after_register_remote_ski() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0, requires_trust=True) as sim,
        running_sidecar(sim) as (control, _),
    ):
        discovered = await sim.wait_for_event("DISCOVERED")
        assert discovered.remote_ski == CONTROLBOX_SKI
        assert not sim.eg_connected
        assert not [e for e in sim.events if e.name == "UseCaseSupportUpdate"]
        with pytest.raises(Exception, match="not connected"):
            sim.send_limit(100)
        await aio(control.register_remote_ski)(RegisterRemoteSkiRequest(CONTROLBOX_SKI))
        await sim.wait_for_event("UseCaseSupportUpdate", timeout=2)
        assert sim.eg_connected


async def test_local_heartbeat_every_timeout_minus_2_s(autojump_clock: object) -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim, heartbeat_timeout_seconds=4) as (_, lpc),
    ):
        await aio(lpc.start_heartbeat)()
        assert sim.local_heartbeat_running
        await trio.sleep(10.5)
        assert sim.cs_heartbeats_sent == 5
        await aio(lpc.stop_heartbeat)()
        await trio.sleep(10)
        assert sim.cs_heartbeats_sent == 5
        assert not sim.local_heartbeat_running
    assert [r.method for r in sim.records if "Heartbeat" in r.method] == [
        "cs_lpc.StartHeartbeat",
        "cs_lpc.StopHeartbeat",
    ]


async def test_frozen_simulator_answers_nothing_until_unfrozen() -> None:
    async with open_hems_simulator() as sim, open_grpc_channel(sim.port) as channel:
        control = ControlServiceStub(channel)
        sim.freeze()
        with pytest.raises(TimeoutError):
            await aio(control.stop_service)(timeout=0.3)
        assert sim.records == []  # held at the gate, not answered
        sim.unfreeze()
        with pytest.raises(GRPCError, match="Service is not running"):
            await aio(control.stop_service)(timeout=2)


async def test_dummy_cem_writes_seeded_random_limits(autojump_clock: object) -> None:
    async def values(seed: int) -> list[float]:
        async with open_hems_simulator("dummy-cem", seed=seed) as sim, running_sidecar(sim):
            with trio.move_on_after(27):
                while True:
                    await sim.wait_for_approval(timeout=math.inf, start=len(sim.approvals))
        return [approval.limit["value"] for approval in sim.approvals]

    first = await values(7)
    assert len(first) >= 2  # every 5 s from 5 s after connecting, each auto-rejected after 10 s
    assert all(100 <= value <= 3000 and value == int(value) for value in first)
    assert await values(7) == first


async def test_set_eg_ski_reconnects_as_another_eg() -> None:
    other = "0123456789abcdef0123456789abcdef01234567"
    async with open_hems_simulator("manual", connect_delay_s=0) as sim, running_sidecar(sim):
        await sim.wait_eg_connected()
        sim.set_eg_ski(other.upper())
        assert sim.eg_ski == other
        update = await sim.wait_for_event("UseCaseSupportUpdate", lambda e: e.remote_ski == other)
        names = [(e.name, e.remote_ski) for e in sim.events if e.index < update.index]
        assert ("REMOVED", CONTROLBOX_SKI) in names
        assert ("DISCOVERED", other) in names


async def test_records_and_waiting_for_them() -> None:
    async with (
        open_hems_simulator("manual", connect_delay_s=0) as sim,
        running_sidecar(sim) as (_, lpc),
    ):
        record = await sim.wait_for_record("SetConfig")
        assert record.ok
        assert record.request["vendor_code"] == "EVerest"
        assert record.request["device_categories"] == ["E_MOBILITY"]
        assert record.request["entity_types"] == ["EVSE"]
        await sim.wait_eg_connected()
        counter = sim.send_limit(1000)
        start = len(sim.records)
        await aio(lpc.approve_or_deny_consumption_limit)(
            ApproveOrDenyConsumptionLimitRequest(counter, True, "fine")
        )
        answer = await sim.wait_for_record(
            "cs_lpc.ApproveOrDenyConsumptionLimit",
            lambda r: r.request["msg_counter"] == counter,
            start=start,
        )
        assert answer.request == {"msg_counter": counter, "approve": True, "reason": "fine"}
        assert answer.t >= record.t
        assert answer.mono >= record.mono
        with pytest.raises(trio.TooSlowError):
            await sim.wait_for_record("StopService", timeout=0.1)
