"""The simulated sidecar's RPCs: lifecycle, error texts and LPC values (spec/wire.md)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from eebus_bridge.generated.common_types import EntityAddress, LoadLimit
from eebus_bridge.generated.control_service import (
    AddEntityRequest,
    AddUseCaseRequest,
    ControlServiceStub,
    DeviceTypeEnum,
    EntityTypeEnum,
    RegisterRemoteSkiRequest,
    RemoveEntityRequest,
    SubscribeUseCaseEventsRequest,
    UseCase,
    UseCaseActorTypeEnum,
    UseCaseNameTypeEnum,
)
from eebus_bridge.generated.cs_lpc import (
    SetConsumptionLimitRequest,
    SetConsumptionNominalMaxRequest,
    SetFailsafeConsumptionActivePowerLimitRequest,
    SetFailsafeDurationMinimumRequest,
)
from tests._sim_fixtures import (
    ENTITY_1,
    LPC_USE_CASE,
    aio,
    event_stream,
    hems_sim,
    lpc_handshake,
    open_grpc_channel,
    valid_config,
)
from tools.hems_simulator import HemsSimulator, SimulatorCrashed, open_hems_simulator

__all__ = ["hems_sim"]  # the fixture, imported for pytest

HOUR_NS = 3600 * 1_000_000_000


def state_of(sim: HemsSimulator) -> str:
    """The lifecycle state's name (a call, so checks in a row are not narrowed away)."""
    return sim.state.value


async def expect_error(call: object, text: str, *args: object) -> None:
    with pytest.raises(GRPCError) as caught:
        await aio(call)(*args)  # type: ignore[arg-type]
    assert caught.value.status is Status.UNKNOWN
    assert caught.value.message == text


async def test_lifecycle_and_its_error_texts(hems_sim: HemsSimulator) -> None:
    async with open_grpc_channel(hems_sim.port) as channel:
        control = ControlServiceStub(channel)
        assert state_of(hems_sim) == "Setup"
        await expect_error(control.start_service, "Service is not ready")
        await expect_error(control.stop_service, "Service is not running")
        await expect_error(
            control.register_remote_ski,
            "Service must be in ready or running state",
            RegisterRemoteSkiRequest(remote_ski="ab" * 20),
        )
        await aio(control.set_config)(valid_config())
        await aio(control.set_config)(valid_config(serial_number="0002"))  # repeatable in Setup
        await aio(control.start_setup)()
        assert state_of(hems_sim) == "Ready"
        await expect_error(control.start_setup, "Service is not in setup state")
        await expect_error(control.set_config, "Service is not in setup state", valid_config())
        await aio(control.register_remote_ski)(
            RegisterRemoteSkiRequest(remote_ski="AB:" * 19 + "AB")
        )
        assert hems_sim.trusted_skis == {"ab" * 20}
        await aio(control.start_service)()
        assert state_of(hems_sim) == "Running"
        await expect_error(control.start_service, "Service is already running")
        await aio(control.register_remote_ski)(RegisterRemoteSkiRequest(remote_ski="cd" * 20))
        await aio(control.stop_service)()
        assert state_of(hems_sim) == "Stopped"
        await expect_error(control.start_service, "Service is not ready")
        await expect_error(control.stop_service, "Service is not running")
        await expect_error(control.set_config, "Service is not in setup state", valid_config())
    outcomes = [(record.method, record.error) for record in hems_sim.records]
    assert outcomes[:3] == [
        ("StartService", "Service is not ready"),
        ("StopService", "Service is not running"),
        ("RegisterRemoteSki", "Service must be in ready or running state"),
    ]
    assert ("StartService", None) in outcomes


async def test_set_config_names_the_first_missing_field(hems_sim: HemsSimulator) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"vendor_code": ""}, "vendorCode"),
        ({"device_brand": ""}, "brand"),
        ({"device_model": ""}, "model"),
        ({"serial_number": ""}, "serialNumber"),
        ({"device_categories": []}, "deviceCategories"),
        ({"device_type": DeviceTypeEnum.UNKNOWN}, "deviceType"),
        ({"entity_types": []}, "entityTypes"),
        ({"port": 0}, "port"),
        ({"heartbeat_timeout_seconds": 0}, "heartbeatTimeout"),
        ({"vendor_code": "", "port": 0}, "vendorCode"),
    ]
    async with open_grpc_channel(hems_sim.port) as channel:
        control = ControlServiceStub(channel)
        for changes, field in cases:
            await expect_error(
                control.set_config,
                f"Failed to create configuration: {field} is required",
                valid_config(**changes),
            )
        assert state_of(hems_sim) == "Setup"
        await aio(control.set_config)(valid_config())


async def test_lenient_config_checks_only_what_upstream_checks() -> None:
    async with (
        open_hems_simulator(strict_config=False) as sim,
        open_grpc_channel(sim.port) as channel,
    ):
        control = ControlServiceStub(channel)
        await aio(control.set_config)(
            valid_config(port=0, heartbeat_timeout_seconds=0, device_type=0)
        )
        await expect_error(
            control.set_config,
            "Failed to create configuration: entityTypes is required",
            valid_config(entity_types=[]),
        )


async def test_add_use_case_answers(hems_sim: HemsSimulator) -> None:
    async with open_grpc_channel(hems_sim.port) as channel:
        control = ControlServiceStub(channel)
        await aio(control.set_config)(valid_config())
        await aio(control.start_setup)()

        async def add(actor: int, name: int, entity: list[int] | None = None) -> str:
            request = AddUseCaseRequest(
                entity_address=EntityAddress(entity_address=entity or [1]),
                use_case=UseCase(actor=UseCaseActorTypeEnum(actor), name=UseCaseNameTypeEnum(name)),
            )
            return (await aio(control.add_use_case)(request)).endpoint

        cs, eg, cem = (
            UseCaseActorTypeEnum.ControllableSystem,
            UseCaseActorTypeEnum.EnergyGuard,
            UseCaseActorTypeEnum.CEM,
        )
        lpc = UseCaseNameTypeEnum.limitationOfPowerConsumption
        with pytest.raises(GRPCError, match="Use case not found"):
            await aio(_first_event)(control)
        endpoint = await add(cs, lpc)
        assert endpoint == f"localhost:{hems_sim.lpc_port}"
        assert hems_sim.lpc_port not in (None, hems_sim.port)
        for actor, name, text in [
            (cs, lpc, "Use case already supported"),
            (cs, UseCaseNameTypeEnum.limitationOfPowerProduction, "Not implemented"),
            (cem, UseCaseNameTypeEnum.coordinatedEvCharging, "Not implemented"),
            (
                cs,
                UseCaseNameTypeEnum.monitoringOfBattery,
                "Unknown use case 'monitoringOfBattery' for role CS",
            ),
            (UseCaseActorTypeEnum.UNKNOWN, lpc, "Unknown role 'UNKNOWN'"),
            (UseCaseActorTypeEnum.EVSE, lpc, "Unknown role 'EVSE'"),
        ]:
            with pytest.raises(GRPCError) as caught:
                await add(actor, name)
            assert caught.value.message == text
        assert (await add(eg, lpc)).startswith("localhost:")
        assert hems_sim.crashed is False


async def _first_event(control: ControlServiceStub) -> object:
    request = SubscribeUseCaseEventsRequest(entity_address=ENTITY_1, use_case=LPC_USE_CASE)
    async for event in control.subscribe_use_case_events(request):
        return event
    return None


@pytest.mark.parametrize("setup_first", [True, False])
async def test_add_use_case_on_unknown_entity_crashes(setup_first: bool) -> None:
    async with open_hems_simulator(allow_crash=True) as sim:
        async with open_grpc_channel(sim.port) as channel:
            control = ControlServiceStub(channel)
            if setup_first:
                await aio(control.set_config)(valid_config())
                await aio(control.start_setup)()
            request = AddUseCaseRequest(
                entity_address=EntityAddress(entity_address=[2]), use_case=LPC_USE_CASE
            )
            with pytest.raises((StreamTerminatedError, ConnectionError, GRPCError)):
                await aio(control.add_use_case)(request, timeout=5)
            assert sim.crashed
            assert "nil pointer dereference" in await sim.wait_crashed()
            assert sim.records[-1].method == "AddUseCase"
            assert sim.records[-1].error is not None
            assert sim.records[-1].error.startswith("crash: ")
        async with open_grpc_channel(sim.port) as channel:
            with pytest.raises(ConnectionRefusedError):
                await aio(ControlServiceStub(channel).start_setup)(timeout=5)


async def test_add_and_remove_entity(hems_sim: HemsSimulator) -> None:
    async with open_grpc_channel(hems_sim.port) as channel:
        control = ControlServiceStub(channel)
        add = AddEntityRequest(type=EntityTypeEnum.EV, address=EntityAddress(entity_address=[2]))
        await expect_error(control.add_entity, "Service is not in ready state", add)
        await aio(control.set_config)(valid_config())
        await aio(control.start_setup)()
        await aio(control.add_entity)(add)
        await expect_error(control.add_entity, "Entity address already used", add)
        await aio(control.add_use_case)(
            AddUseCaseRequest(entity_address=add.address, use_case=LPC_USE_CASE)
        )
        await aio(control.remove_entity)(RemoveEntityRequest(address=add.address))
        await expect_error(
            control.remove_entity, "Entity not found", RemoveEntityRequest(address=add.address)
        )


async def test_values_right_after_add_use_case(hems_sim: HemsSimulator) -> None:
    async with (
        open_grpc_channel(hems_sim.port) as channel,
        lpc_handshake(ControlServiceStub(channel)) as lpc,
    ):
        limit = (await aio(lpc.consumption_limit)()).load_limit
        assert limit is not None
        assert (limit.value, limit.is_changeable, limit.is_active) == (0.0, True, False)
        assert (limit.duration_nanoseconds, limit.delete_duration) == (0, False)
        failsafe = await aio(lpc.failsafe_consumption_active_power_limit)()
        assert (failsafe.limit, failsafe.is_changeable) == (0.0, True)
        duration = await aio(lpc.failsafe_duration_minimum)()
        assert (duration.duration_nanoseconds, duration.is_changeable) == (0, True)
        await expect_error(lpc.consumption_nominal_max, "data not available")
        assert (await aio(lpc.pending_consumption_limit)()).load_limits == {}
        assert not (await aio(lpc.is_heartbeat_within_duration)()).is_within_duration


async def test_local_writes_and_failsafe_duration_range(hems_sim: HemsSimulator) -> None:
    async with (
        open_grpc_channel(hems_sim.port) as channel,
        lpc_handshake(ControlServiceStub(channel)) as lpc,
    ):
        await aio(lpc.set_consumption_nominal_max)(SetConsumptionNominalMaxRequest(11000))
        assert (await aio(lpc.consumption_nominal_max)()).value == 11000
        await aio(lpc.set_consumption_limit)(
            SetConsumptionLimitRequest(
                LoadLimit(is_changeable=True, value=11000, delete_duration=True)
            )
        )
        limit = (await aio(lpc.consumption_limit)()).load_limit
        assert limit is not None
        assert (limit.value, limit.delete_duration, limit.duration_nanoseconds) == (
            11000,
            False,
            0,
        )
        await aio(lpc.set_failsafe_consumption_active_power_limit)(
            SetFailsafeConsumptionActivePowerLimitRequest(value=4200, is_changeable=False)
        )
        failsafe = await aio(lpc.failsafe_consumption_active_power_limit)()
        assert (failsafe.limit, failsafe.is_changeable) == (4200, False)
        for hours in (1.999, 24.001, 0, -2):
            await expect_error(
                lpc.set_failsafe_duration_minimum,
                "duration outside of allowed range",
                SetFailsafeDurationMinimumRequest(round(hours * HOUR_NS), True),
            )
        for hours in (2, 24):
            await aio(lpc.set_failsafe_duration_minimum)(
                SetFailsafeDurationMinimumRequest(hours * HOUR_NS, True)
            )
            duration = await aio(lpc.failsafe_duration_minimum)()
            assert duration.duration_nanoseconds == hours * HOUR_NS


async def test_consumption_limit_counts_down_and_stays_active(autojump_clock: object) -> None:
    async with (
        open_hems_simulator() as sim,
        open_grpc_channel(sim.port) as channel,
        lpc_handshake(ControlServiceStub(channel)) as lpc,
    ):
        await aio(lpc.set_consumption_limit)(
            SetConsumptionLimitRequest(
                LoadLimit(60 * 10**9, is_changeable=True, is_active=True, value=3000)
            )
        )
        set_at = trio.current_time()

        async def remaining_s() -> tuple[float, bool]:
            limit = (await aio(lpc.consumption_limit)()).load_limit
            assert limit is not None
            return limit.duration_nanoseconds / 1e9, limit.is_active

        assert await remaining_s() == (60, True)
        await trio.sleep_until(set_at + 20.4)
        assert await remaining_s() == (40, True)  # 39.6 s rounds to 40
        await trio.sleep_until(set_at + 70.2)
        assert await remaining_s() == (-10, True)  # negative after expiry, still active


async def test_stream_of_an_unadded_use_case_is_refused(hems_sim: HemsSimulator) -> None:
    async with open_grpc_channel(hems_sim.port) as channel:
        control = ControlServiceStub(channel)
        start = event_stream(control)

        async def first() -> object:
            async for event in start():
                return event
            return None

        with pytest.raises(GRPCError) as caught:
            await aio(first)()
        assert caught.value.status is Status.UNKNOWN
        assert caught.value.message == "Use case not found"


async def test_leaving_a_crashed_simulator_raises_unless_allowed() -> None:
    async def crash_it() -> None:
        async with open_hems_simulator() as sim, open_grpc_channel(sim.port) as channel:
            with pytest.raises((StreamTerminatedError, ConnectionError, GRPCError)):
                await aio(ControlServiceStub(channel).start_setup)(timeout=5)  # no SetConfig
            assert sim.crashed

    with pytest.raises(SimulatorCrashed, match="nil pointer dereference"):
        await crash_it()
