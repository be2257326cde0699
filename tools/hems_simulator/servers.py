"""The gRPC face of the simulated sidecar: ControlService and the cs_lpc use-case service.

Each RPC is recorded (method, request, outcome), waits while the simulator is frozen, and
turns SidecarError into status UNKNOWN with the real sidecar's text. Streams follow the Go
handlers: use-case events come from the shared rendezvous queue, discovery events from a
32-entry buffer per subscriber.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import betterproto2
import trio
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server

from eebus_bridge.generated import control_service as cs
from eebus_bridge.generated import cs_lpc
from eebus_bridge.generated.common_types import LoadLimit
from eebus_bridge.grpc_transport import CoalescingTransport

from .channels import FreezeGate
from .logs import SimLog
from .records import RecordBook
from .sidecar import LpcData, SidecarCrash, SidecarError, SimulatedSidecar, UseCaseEntry

_R = TypeVar("_R")
_UNIMPLEMENTED_DISCOVERY = (
    "unknown method SubscribeDiscoveryEvents for service control_service.ControlService"
)


class EncodedOnceCodec(ProtoCodec):
    """grpclib's protobuf codec, encoding each use-case event message object only once.

    The sidecar model sends one message object per (event, SKI, entity) again and again
    (`SimulatedSidecar._emit`); encoding it was a quarter of the simulator's CPU in a heartbeat
    flood. Messages are never changed after they are built, so the bytes of a message object
    are those of its first encoding. Other messages are encoded as usual.
    """

    _LIMIT = 256  # distinct event messages kept; more means a test invents SKIs: start over

    def __init__(self) -> None:
        self._encoded: dict[int, tuple[Any, bytes]] = {}

    def encode(self, message: Any, message_type: Any) -> bytes:
        if type(message) is not cs.SubscribeUseCaseEventsResponse:
            return super().encode(message, message_type)
        known = self._encoded.get(id(message))
        if known is not None and known[0] is message:
            return known[1]
        data = super().encode(message, message_type)
        if len(self._encoded) >= self._LIMIT:
            self._encoded.clear()
        self._encoded[id(message)] = (message, data)  # the reference keeps the id unique
        return data


class AbortableServer(Server):
    """A grpclib Server that can drop its client connections like a dying process would.

    grpclib's close() cancels the running handlers but keeps established HTTP/2 connections
    open; a crashed or stopped sidecar takes them down, and clients must see that.
    """

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers, codec=EncodedOnceCodec())
        self._transports: set[asyncio.BaseTransport] = set()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        made = protocol.connection_made
        lost = protocol.connection_lost
        mine: list[asyncio.BaseTransport] = []

        def connection_made(transport: asyncio.BaseTransport) -> None:
            mine.append(transport)
            self._transports.add(transport)
            # One segment per response instead of one per HTTP/2 frame: the simulator's own
            # cost per RPC must stay small next to the client's it is used to measure.
            assert isinstance(transport, asyncio.Transport)
            made(CoalescingTransport(transport, asyncio.get_running_loop()))

        def connection_lost(exc: BaseException | None) -> None:
            self._transports.difference_update(mine)
            lost(exc)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    @property
    def port(self) -> int:
        listener = self._server
        sockets = getattr(listener, "sockets", None) or ()
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        raise RuntimeError("server is not listening")

    def abort(self) -> None:
        """Stop listening, cancel handlers and drop every connection at once."""
        if self._server is not None:
            self.close()
        for transport in list(self._transports):
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()
        self._transports.clear()


class ServerSet:
    """Every gRPC server of one simulated sidecar process, for crash and shutdown."""

    def __init__(self) -> None:
        self.servers: list[AbortableServer] = []

    def add(self, server: AbortableServer) -> None:
        self.servers.append(server)

    def abort_all(self) -> None:
        for server in self.servers:
            server.abort()

    async def close_all(self) -> None:
        """asyncio side: abort, then wait (bounded by the caller) until handlers are gone."""
        self.abort_all()
        waits = [server.wait_closed() for server in self.servers if server._server is not None]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)


class HeldRpc:
    """One coming call of a method whose answer is held back (a slow sidecar or network).

    The answer is computed when the request arrives and sent `seconds` later, so a test can
    tell the held answer from one computed afterwards. `started` is set when the hold begins.
    """

    def __init__(self, method: str, seconds: float) -> None:
        self.method = method
        self.seconds = seconds
        self.started = trio.Event()
        self.finished = trio.Event()


class RpcRunner:
    """Records, freezes and maps errors for every RPC of every simulated server."""

    def __init__(
        self,
        *,
        records: RecordBook,
        gate: FreezeGate,
        on_crash: Callable[[str], None],
    ) -> None:
        self.records = records
        self.gate = gate
        self.on_crash = on_crash
        self.holds: dict[str, HeldRpc] = {}

    def hold_next(self, method: str, seconds: float) -> HeldRpc:
        """Hold back the answer of the next call of `method` (e.g. "cs_lpc.ConsumptionLimit")."""
        hold = HeldRpc(method, seconds)
        self.holds[method] = hold
        return hold

    async def _held(self, hold: HeldRpc) -> None:
        hold.started.set()
        try:
            await asyncio.sleep(hold.seconds)
        finally:
            hold.finished.set()

    async def run(self, method: str, request: betterproto2.Message, action: Callable[[], _R]) -> _R:
        async def wrapped() -> _R:
            return action()

        return await self.run_async(method, request, wrapped)

    async def run_async(
        self,
        method: str,
        request: betterproto2.Message,
        action: Callable[[], Awaitable[_R]],
    ) -> _R:
        if self.gate.frozen:
            await self.gate.pass_through()
        try:
            result = await action()
            if self.holds:
                hold = self.holds.pop(method, None)
                if hold is not None:
                    await self._held(hold)
        except SidecarError as exc:
            self.records.add_rpc(method, request, str(exc))
            raise GRPCError(Status.UNKNOWN, str(exc)) from None
        except SidecarCrash as exc:
            self.records.add_rpc(method, request, f"crash: {exc}")
            self.on_crash(str(exc))
            # In-process the connections are gone by now; nothing reaches the client.
            raise GRPCError(Status.UNAVAILABLE, "sidecar crashed") from None
        self.records.add_rpc(method, request)
        return result


class ControlService(cs.ControlServiceBase):
    def __init__(
        self,
        sidecar: SimulatedSidecar,
        runner: RpcRunner,
        servers: ServerSet,
        log: SimLog,
        *,
        discovery: bool,
    ) -> None:
        self._sidecar = sidecar
        self._rpc = runner
        self._servers = servers
        self._log = log
        self.discovery = discovery

    async def _call_rpc_handler_server_stream(
        self, handler: Callable[..., Any], stream: Any, request: Any
    ) -> None:
        # Close the generator right away when the stream ends (its finally blocks unsubscribe
        # and account for the event in flight), not whenever it is garbage-collected.
        async with aclosing(handler(request)) as messages:
            async for message in messages:
                await stream.send_message(message)

    async def start_service(self, message: cs.EmptyRequest) -> cs.EmptyResponse:
        await self._rpc.run("StartService", message, self._sidecar.start_service)
        return cs.EmptyResponse()

    async def stop_service(self, message: cs.EmptyRequest) -> cs.EmptyResponse:
        await self._rpc.run("StopService", message, self._sidecar.stop_service)
        return cs.EmptyResponse()

    async def set_config(self, message: cs.SetConfigRequest) -> cs.EmptyResponse:
        await self._rpc.run("SetConfig", message, lambda: self._sidecar.set_config(message))
        return cs.EmptyResponse()

    async def start_setup(self, message: cs.EmptyRequest) -> cs.EmptyResponse:
        await self._rpc.run("StartSetup", message, self._sidecar.start_setup)
        return cs.EmptyResponse()

    async def add_entity(self, message: cs.AddEntityRequest) -> cs.EmptyResponse:
        await self._rpc.run("AddEntity", message, lambda: self._sidecar.add_entity(message))
        return cs.EmptyResponse()

    async def remove_entity(self, message: cs.RemoveEntityRequest) -> cs.EmptyResponse:
        await self._rpc.run("RemoveEntity", message, lambda: self._sidecar.remove_entity(message))
        return cs.EmptyResponse()

    async def register_remote_ski(self, message: cs.RegisterRemoteSkiRequest) -> cs.EmptyResponse:
        await self._rpc.run(
            "RegisterRemoteSki",
            message,
            lambda: self._sidecar.register_remote_ski(message.remote_ski),
        )
        return cs.EmptyResponse()

    async def add_use_case(self, message: cs.AddUseCaseRequest) -> cs.AddUseCaseResponse:
        async def add() -> cs.AddUseCaseResponse:
            entry = self._sidecar.add_use_case(message)
            services: list[Any] = []
            if entry.lpc is not None:
                services.append(CsLpcService(self._sidecar, entry.lpc, self._rpc))
            # The EnergyGuard variant gets a server too (upstream serves eg_lpc there); the
            # bridge never calls it, so it answers every method UNIMPLEMENTED.
            server = AbortableServer(services)
            try:
                await server.start("127.0.0.1", 0)
            except OSError as exc:
                raise SidecarError(f"Failed to start use case server: {exc}") from exc
            self._servers.add(server)
            entry.port = server.port
            self._log.raw(f"server running at port {entry.port}")
            return cs.AddUseCaseResponse(endpoint=f"localhost:{entry.port}")

        return await self._rpc.run_async("AddUseCase", message, add)

    async def subscribe_use_case_events(
        self, message: cs.SubscribeUseCaseEventsRequest
    ) -> AsyncIterator[cs.SubscribeUseCaseEventsResponse]:
        entry: UseCaseEntry = await self._rpc.run(
            "SubscribeUseCaseEvents", message, lambda: self._sidecar.find_use_case(message)
        )
        queue = entry.events
        if queue is None:
            # A use case without events (the EG variant): the stream stays open and silent.
            await asyncio.get_running_loop().create_future()
            return
        gate = self._rpc.gate
        while True:
            await gate.pass_through()
            event = await queue.get()
            try:
                await gate.pass_through()
                yield event
            except BaseException:
                # Taken from the channel but never sent: the event in flight is lost.
                self._sidecar.event_lost(event)
                raise

    async def subscribe_discovery_events(
        self, message: cs.SubscribeDiscoveryEventsRequest
    ) -> AsyncIterator[cs.DiscoveryEvent]:
        if not self.discovery:
            # v0.1.0 and older have no such method; grpc-go answers UNIMPLEMENTED.
            self._rpc.records.add_rpc("SubscribeDiscoveryEvents", message, _UNIMPLEMENTED_DISCOVERY)
            raise GRPCError(Status.UNIMPLEMENTED, _UNIMPLEMENTED_DISCOVERY)
        snapshot, buffer = await self._rpc.run(
            "SubscribeDiscoveryEvents", message, self._sidecar.subscribe_discovery
        )
        gate = self._rpc.gate
        try:
            for event in snapshot:
                await gate.pass_through()
                yield event
            while True:
                event = await buffer.get()
                await gate.pass_through()
                yield event
        finally:
            self._sidecar.unsubscribe_discovery(buffer)


class CsLpcService(cs_lpc.ControllableSystemLpcControlBase):
    """One LPC use case's server (its own port, like upstream)."""

    def __init__(self, sidecar: SimulatedSidecar, lpc: LpcData, runner: RpcRunner) -> None:
        self._sidecar = sidecar
        self._lpc = lpc
        self._rpc = runner

    async def consumption_limit(
        self, message: cs_lpc.ConsumptionLimitRequest
    ) -> cs_lpc.ConsumptionLimitResponse:
        limit = await self._rpc.run(
            "cs_lpc.ConsumptionLimit",
            message,
            lambda: self._sidecar.consumption_limit(self._lpc),
        )
        return cs_lpc.ConsumptionLimitResponse(load_limit=limit)

    async def set_consumption_limit(
        self, message: cs_lpc.SetConsumptionLimitRequest
    ) -> cs_lpc.SetConsumptionLimitResponse:
        limit = message.load_limit or LoadLimit()
        await self._rpc.run(
            "cs_lpc.SetConsumptionLimit",
            message,
            lambda: self._sidecar.set_consumption_limit(self._lpc, limit),
        )
        return cs_lpc.SetConsumptionLimitResponse()

    async def pending_consumption_limit(
        self, message: cs_lpc.PendingConsumptionLimitRequest
    ) -> cs_lpc.PendingConsumptionLimitResponse:
        limits = await self._rpc.run(
            "cs_lpc.PendingConsumptionLimit",
            message,
            lambda: self._sidecar.pending_limits(self._lpc),
        )
        return cs_lpc.PendingConsumptionLimitResponse(load_limits=limits)

    async def approve_or_deny_consumption_limit(
        self, message: cs_lpc.ApproveOrDenyConsumptionLimitRequest
    ) -> cs_lpc.ApproveOrDenyConsumptionLimitResponse:
        await self._rpc.run(
            "cs_lpc.ApproveOrDenyConsumptionLimit",
            message,
            lambda: self._sidecar.approve_or_deny(
                self._lpc, message.msg_counter, message.approve, message.reason
            ),
        )
        return cs_lpc.ApproveOrDenyConsumptionLimitResponse()

    async def failsafe_consumption_active_power_limit(
        self, message: cs_lpc.FailsafeConsumptionActivePowerLimitRequest
    ) -> cs_lpc.FailsafeConsumptionActivePowerLimitResponse:
        lpc = self._lpc
        await self._rpc.run("cs_lpc.FailsafeConsumptionActivePowerLimit", message, lambda: None)
        return cs_lpc.FailsafeConsumptionActivePowerLimitResponse(
            limit=lpc.failsafe_limit, is_changeable=lpc.failsafe_limit_changeable
        )

    async def set_failsafe_consumption_active_power_limit(
        self, message: cs_lpc.SetFailsafeConsumptionActivePowerLimitRequest
    ) -> cs_lpc.SetFailsafeConsumptionActivePowerLimitResponse:
        await self._rpc.run(
            "cs_lpc.SetFailsafeConsumptionActivePowerLimit",
            message,
            lambda: self._sidecar.set_failsafe_limit(
                self._lpc, message.value, message.is_changeable
            ),
        )
        return cs_lpc.SetFailsafeConsumptionActivePowerLimitResponse()

    async def failsafe_duration_minimum(
        self, message: cs_lpc.FailsafeDurationMinimumRequest
    ) -> cs_lpc.FailsafeDurationMinimumResponse:
        lpc = self._lpc
        await self._rpc.run("cs_lpc.FailsafeDurationMinimum", message, lambda: None)
        return cs_lpc.FailsafeDurationMinimumResponse(
            duration_nanoseconds=lpc.failsafe_duration_ns,
            is_changeable=lpc.failsafe_duration_changeable,
        )

    async def set_failsafe_duration_minimum(
        self, message: cs_lpc.SetFailsafeDurationMinimumRequest
    ) -> cs_lpc.SetFailsafeDurationMinimumResponse:
        await self._rpc.run(
            "cs_lpc.SetFailsafeDurationMinimum",
            message,
            lambda: self._sidecar.set_failsafe_duration(
                self._lpc, message.duration_nanoseconds, message.is_changeable
            ),
        )
        return cs_lpc.SetFailsafeDurationMinimumResponse()

    async def start_heartbeat(
        self, message: cs_lpc.StartHeartbeatRequest
    ) -> cs_lpc.StartHeartbeatResponse:
        await self._rpc.run("cs_lpc.StartHeartbeat", message, self._sidecar.start_heartbeat)
        return cs_lpc.StartHeartbeatResponse()

    async def stop_heartbeat(
        self, message: cs_lpc.StopHeartbeatRequest
    ) -> cs_lpc.StopHeartbeatResponse:
        await self._rpc.run("cs_lpc.StopHeartbeat", message, self._sidecar.stop_heartbeat)
        return cs_lpc.StopHeartbeatResponse()

    async def is_heartbeat_within_duration(
        self, message: cs_lpc.IsHeartbeatWithinDurationRequest
    ) -> cs_lpc.IsHeartbeatWithinDurationResponse:
        within = await self._rpc.run(
            "cs_lpc.IsHeartbeatWithinDuration",
            message,
            self._sidecar.is_heartbeat_within_duration,
        )
        return cs_lpc.IsHeartbeatWithinDurationResponse(is_within_duration=within)

    async def consumption_nominal_max(
        self, message: cs_lpc.ConsumptionNominalMaxRequest
    ) -> cs_lpc.ConsumptionNominalMaxResponse:
        value = await self._rpc.run(
            "cs_lpc.ConsumptionNominalMax",
            message,
            lambda: self._sidecar.nominal_max(self._lpc),
        )
        return cs_lpc.ConsumptionNominalMaxResponse(value=value)

    async def set_consumption_nominal_max(
        self, message: cs_lpc.SetConsumptionNominalMaxRequest
    ) -> cs_lpc.SetConsumptionNominalMaxResponse:
        await self._rpc.run(
            "cs_lpc.SetConsumptionNominalMax",
            message,
            lambda: self._sidecar.set_nominal_max(self._lpc, message.value),
        )
        return cs_lpc.SetConsumptionNominalMaxResponse()
