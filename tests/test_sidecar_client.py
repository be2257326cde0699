"""The sidecar client over both HTTP/2 stacks ([eebus] grpc_transport): the same calls, the same
values, the same three exceptions for the same failures. Real gRPC against the in-process
simulator (a grpclib server) and a raw HTTP/2 server that sends bytes no real sidecar would."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_asyncio

from eebus_bridge.config import load_config
from eebus_bridge.eebus_link import set_config_request
from eebus_bridge.grpc_transport import TRANSPORTS, TransportName
from eebus_bridge.island import open_island
from eebus_bridge.lpc import Answer, SidecarLimit
from eebus_bridge.sidecar_client import (
    NOT_IN_SETUP,
    DiscoveryEvent,
    SidecarClient,
    SidecarRpcError,
    SidecarUnreachable,
)
from tests._bridge_fixtures import write_config
from tests._raw_sidecar import RawSidecar, open_raw_sidecar
from tools.hems_simulator import HemsSimulator, open_hems_simulator

pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


@asynccontextmanager
async def connected(
    folder: Path, transport: TransportName, *, rpc_timeout_s: float = 2.0
) -> AsyncIterator[tuple[HemsSimulator, SidecarClient]]:
    """The simulator (its EG connects 0.1 s after StartService and writes nothing), and a
    client that did the handshake up to the LPC endpoint."""
    async with (
        open_island(),
        open_hems_simulator("controlbox", connect_delay_s=0.1, actions=()) as sim,
        SidecarClient("127.0.0.1", sim.port, rpc_timeout_s, transport) as client,
    ):
        config = load_config(write_config(folder, grpc_port=sim.port)).config
        await client.set_config(set_config_request(config))
        await client.start_setup()
        await client.connect_lpc(await client.add_use_case())
        yield sim, client


@asynccontextmanager
async def raw_connected(
    transport: TransportName,
) -> AsyncIterator[tuple[RawSidecar, SidecarClient]]:
    """The raw HTTP/2 sidecar (tests/_raw_sidecar.py) and a client of it (no call made yet)."""
    async with (
        open_island(),
        open_raw_sidecar() as sidecar,
        SidecarClient("127.0.0.1", sidecar.port, 2.0, transport) as client,
    ):
        yield sidecar, client


async def test_calls_carry_the_values(tmp_path: Path, transport: TransportName) -> None:
    async with connected(tmp_path, transport) as (_, client):
        limit = SidecarLimit(value=1234.5, is_active=True, duration_s=90.0, is_changeable=True)
        await client.set_consumption_nominal_max(11000.0)
        await client.set_consumption_limit(limit)
        await client.set_failsafe_limit(3000.0)
        await client.set_failsafe_duration(7200.0)
        assert await client.consumption_limit() == limit
        assert await client.failsafe_limit() == 3000.0
        assert await client.failsafe_duration() == 7200.0
        assert await client.pending_consumption_limits() == []


async def test_the_sidecars_error_is_an_rpc_error_with_its_text(
    tmp_path: Path, transport: TransportName
) -> None:
    async with connected(tmp_path, transport) as (_, client):
        config = load_config(tmp_path / "bridge.toml").config
        with pytest.raises(SidecarRpcError) as caught:
            await client.set_config(set_config_request(config))  # past its setup now
        assert caught.value.rpc == "SetConfig"
        assert caught.value.status == "UNKNOWN"
        assert NOT_IN_SETUP in caught.value.message


async def test_nobody_listening_is_unreachable(transport: TransportName) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with open_island(), SidecarClient("127.0.0.1", port, 1.0, transport) as client:
        with trio.fail_after(5), pytest.raises(SidecarUnreachable, match="StartSetup"):
            await client.start_setup()


async def test_a_sidecar_slow_to_open_its_http2_connection_is_still_reached(
    transport: TransportName,
) -> None:
    # A loaded board (or the suite's in-process simulator on a busy CI machine) may send its
    # SETTINGS frame late; within the call's deadline that must not fail the connection.
    async with raw_connected(transport) as (sidecar, client):
        sidecar.settings_delay_s = 0.3
        with trio.fail_after(5):
            await client.start_setup()
        assert sidecar.calls == ["StartSetup"]


async def test_an_answer_past_the_deadline_is_unreachable_and_the_next_call_works(
    tmp_path: Path, transport: TransportName
) -> None:
    async with connected(tmp_path, transport, rpc_timeout_s=0.3) as (sim, client):
        sim.hold_rpc("cs_lpc.ConsumptionLimit", 1.5)
        start = trio.current_time()
        with pytest.raises(SidecarUnreachable, match=r"(?i)ConsumptionLimit: .*deadline"):
            await client.consumption_limit()
        assert trio.current_time() - start < 1.3  # the call's own deadline, not the backstop
        assert await client.failsafe_limit() >= 0


async def test_an_answer_that_does_not_decode_is_one_bad_answer(
    transport: TransportName,
) -> None:
    async with raw_connected(transport) as (sidecar, client):
        await client.connect_lpc(f"127.0.0.1:{sidecar.port}")
        sidecar.replies["ConsumptionLimit"] = b"\x0a\x05\x25\xff"  # cut inside a double
        with pytest.raises(SidecarRpcError) as caught:
            await client.consumption_limit()
        assert caught.value.status == "UNDECODABLE"
        assert "not a valid message" in caught.value.message
        sidecar.replies["ConsumptionLimit"] = b""  # an empty message is a valid one
        assert (await client.consumption_limit()).value == 0.0


async def test_a_stream_subscription_goes_out_before_the_next_call(
    tmp_path: Path, transport: TransportName
) -> None:
    async with connected(tmp_path, transport) as (sim, client), trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[DiscoveryEvent](10)
        subscribed = trio.Event()
        nursery.start_soon(client.stream_discovery_events, send, subscribed)
        await subscribed.wait()
        await client.start_service()  # the EG is discovered once the service runs
        methods = [r.method for r in sim.records]
        assert methods.index("SubscribeDiscoveryEvents") < methods.index("StartService")
        with trio.fail_after(5):
            event = await receive.receive()
        assert (event.kind, event.ski) == ("DISCOVERED", sim.eg.ski)
        nursery.cancel_scope.cancel()


async def test_on_sent_comes_once_the_request_left_and_before_the_answer(
    tmp_path: Path, transport: TransportName
) -> None:
    """The approval lane makes the engine's reports of a decision in `on_sent`: after the
    answer went out (so they do not delay it), without waiting for the sidecar's reply."""
    async with connected(tmp_path, transport) as (sim, client):
        held = sim.hold_rpc("cs_lpc.ApproveOrDenyConsumptionLimit", 1.0)
        sent: list[tuple[float, bool]] = []

        def on_sent() -> None:
            sent.append((trio.current_time(), held.finished.is_set()))

        answer = Answer(msg_counter=7, approve=False, reason="test")
        await trio_asyncio.aio_as_trio(client._aio_answer)(answer, on_sent)
        answered = trio.current_time()
        assert held.started.is_set()  # the request reached the sidecar
        assert len(sent) == 1
        sent_at, reply_was_sent = sent[0]
        assert not reply_was_sent
        assert answered - sent_at >= 0.5  # generous: the reply was held for 1 s
        await trio_asyncio.aio_as_trio(client._aio_answer)(answer, on_sent)  # not held
        assert len(sent) == 2
