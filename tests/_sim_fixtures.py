"""pytest-trio fixtures and client helpers for the HEMS simulator (tools/hems_simulator).

Fixtures:
- hems_sim: the simulator in-process (controlbox preset, port 0, control interface on a free
  port), inside a trio-asyncio loop (the test's, or one the simulator opens; either way the
  test can use trio_asyncio.aio_as_trio while it runs).
- hems_sim_process: the simulator as a subprocess started like the real sidecar
  (tools/eebus_grpc_api_sim -port P -certificate-path .. -private-key-path ..) plus
  -control-port 0 and -record in tmp_path; yields a SimulatorProcess handle.
- hems_sim_process_factory: `await start(scenario=..., extra_args=[...])` for several or
  customised subprocesses; all are stopped at teardown.

Helpers for plain grpclib clients: open_grpc_channel, aio, open_stream, lpc_handshake.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio_asyncio
from grpclib.client import Channel

from eebus_bridge.generated.common_types import EntityAddress
from eebus_bridge.generated.control_service import (
    AddUseCaseRequest,
    ControlServiceStub,
    DeviceCategoryEnum,
    DeviceTypeEnum,
    EntityTypeEnum,
    SetConfigRequest,
    SubscribeUseCaseEventsRequest,
    UseCase,
    UseCaseActorTypeEnum,
    UseCaseNameTypeEnum,
)
from eebus_bridge.generated.cs_lpc import ControllableSystemLpcControlStub
from tools.hems_simulator import HemsSimulator, SimulatorProcess, open_hems_simulator
from tools.hems_simulator.process import open_simulator_process

_T = TypeVar("_T")

LPC_USE_CASE = UseCase(
    actor=UseCaseActorTypeEnum.ControllableSystem,
    name=UseCaseNameTypeEnum.limitationOfPowerConsumption,
)
ENTITY_1 = EntityAddress(entity_address=[1])


def aio(function: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """Call an asyncio coroutine function (a grpclib stub method) from Trio."""
    return trio_asyncio.aio_as_trio(function)  # type: ignore[no-any-return]


def valid_config(**changes: Any) -> SetConfigRequest:
    """A SetConfig the way the bridge sends it (lpc.md handshake step 2)."""
    values: dict[str, Any] = {
        "port": 4715,
        "vendor_code": "EVerest",
        "device_brand": "EVerest",
        "device_model": "Bridge",
        "serial_number": "0001",
        "device_categories": [DeviceCategoryEnum.E_MOBILITY],
        "device_type": DeviceTypeEnum.CHARGING_STATION,
        "entity_types": [EntityTypeEnum.EVSE],
        "heartbeat_timeout_seconds": 60,
    }
    values.update(changes)
    return SetConfigRequest(**values)


@asynccontextmanager
async def open_grpc_channel(port: int, host: str = "127.0.0.1") -> AsyncIterator[Channel]:
    """A grpclib Channel made on the asyncio side and closed at exit."""

    async def make() -> Channel:
        return Channel(host, port)

    channel = await aio(make)()
    try:
        yield channel
    finally:
        channel.close()


@asynccontextmanager
async def open_stream(
    start: Callable[[], AsyncIterator[_T]],
) -> AsyncIterator[trio.MemoryReceiveChannel[_T | BaseException]]:
    """Run one server stream as one asyncio task that feeds a Trio channel.

    Items are the messages; if the stream fails, its exception is the last item. Leaving
    the block cancels the stream (the client resets it, the server sees it break).
    """
    send, receive = trio.open_memory_channel[_T | BaseException](math.inf)

    async def pump() -> None:
        try:
            async for message in start():
                send.send_nowait(message)
        except Exception as exc:
            send.send_nowait(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(aio(pump))
        try:
            yield receive
        finally:
            nursery.cancel_scope.cancel()


def event_stream(control: ControlServiceStub) -> Callable[[], AsyncIterator[Any]]:
    request = SubscribeUseCaseEventsRequest(entity_address=ENTITY_1, use_case=LPC_USE_CASE)
    return lambda: control.subscribe_use_case_events(request)


@asynccontextmanager
async def lpc_handshake(
    control: ControlServiceStub, **config_changes: Any
) -> AsyncIterator[ControllableSystemLpcControlStub]:
    """SetConfig, StartSetup, AddUseCase([1], CS/LPC); yields a stub on the endpoint."""
    await aio(control.set_config)(valid_config(**config_changes))
    await aio(control.start_setup)()
    response = await aio(control.add_use_case)(
        AddUseCaseRequest(entity_address=ENTITY_1, use_case=LPC_USE_CASE)
    )
    host, _, port = response.endpoint.rpartition(":")
    assert host == "localhost"
    async with open_grpc_channel(int(port)) as channel:
        yield ControllableSystemLpcControlStub(channel)


@pytest.fixture
async def hems_sim() -> AsyncIterator[HemsSimulator]:
    async with open_hems_simulator("controlbox", port=0, control_port=0) as sim:
        yield sim


@pytest.fixture
async def hems_sim_process(tmp_path: Path) -> AsyncIterator[SimulatorProcess]:
    async with open_simulator_process(tmp_path) as process:
        yield process


@pytest.fixture
async def hems_sim_process_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[SimulatorProcess]]]:
    """`await start(**open_simulator_process kwargs)`; each gets its own folder."""
    async with trio.open_nursery() as nursery:
        count = 0

        async def run(
            workdir: Path,
            kwargs: dict[str, Any],
            *,
            task_status: trio.TaskStatus[SimulatorProcess] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            async with open_simulator_process(workdir, **kwargs) as process:
                task_status.started(process)
                await trio.sleep_forever()

        async def start(**kwargs: Any) -> SimulatorProcess:
            nonlocal count
            count += 1
            workdir = tmp_path / f"sim{count}"
            workdir.mkdir()
            process: SimulatorProcess = await nursery.start(run, workdir, kwargs)
            return process

        yield start
        nursery.cancel_scope.cancel()
