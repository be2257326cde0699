"""The gRPC client of the eebus_grpc_api sidecar, seen from Trio.

grpclib is asyncio-only, so this module is the one asyncio island of the bridge (trio-asyncio):
every grpclib object is created and used inside `aio_as_trio`, and nothing else in the package
imports grpclib or asyncio. Callers get plain Trio coroutines, values as `SidecarLimit` floats in
seconds, and two exception types: `SidecarRpcError` (the sidecar answered with an error) and
`SidecarUnreachable` (no answer: refused, reset, or past the deadline).

Every unary call has a deadline (rpc_timeout_s): a hung sidecar must surface as an error instead
of freezing the bridge (stack-notes: grpclib never notices a stopped server by itself).
"""

from __future__ import annotations

# trio_asyncio before grpclib: grpclib keeps a reference to asyncio.current_task at import, and
# on Python >= 3.12 only trio_asyncio's replacement of it sees trio-asyncio's loop.
import trio_asyncio  # isort: skip

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import grpclib.client
import grpclib.exceptions
import trio
from grpclib.const import Cardinality, Status

from eebus_bridge.generated import common_types, cs_lpc
from eebus_bridge.generated import control_service as cs
from eebus_bridge.lpc import SidecarLimit

log = logging.getLogger(__name__)

T = TypeVar("T")

NANOSECONDS = 1_000_000_000
LPC_ENTITY = common_types.EntityAddress(entity_address=[1])
LPC_USE_CASE = cs.UseCase(
    actor=cs.UseCaseActorTypeEnum.ControllableSystem,
    name=cs.UseCaseNameTypeEnum.limitationOfPowerConsumption,
)
# Error texts of the real sidecar that the handshake reacts to (spec/wire.md).
NOT_IN_SETUP = "Service is not in setup state"
ALREADY_RUNNING = "Service is already running"


class SidecarRpcError(Exception):
    """The sidecar answered an RPC with an error status (it uses UNKNOWN plus a text)."""

    def __init__(self, rpc: str, status: str, message: str) -> None:
        super().__init__(f"{rpc}: {message or status}")
        self.rpc = rpc
        self.status = status
        self.message = message


class SidecarUnreachable(Exception):
    """No answer from the sidecar: connection refused or reset, or the deadline passed."""


@attrs.frozen
class UseCaseEvent:
    """One SubscribeUseCaseEvents message, reduced to what the bridge uses."""

    name: str
    ski: str


@attrs.frozen
class DiscoveryEvent:
    kind: str  # "DISCOVERED" | "REMOVED" | "UNKNOWN"
    ski: str
    is_trusted: bool
    brand: str
    model: str
    device_type: str = ""  # as the EG announces it, e.g. "EnergyManagementSystem"


def limit_from_wire(load_limit: common_types.LoadLimit | None) -> SidecarLimit:
    if load_limit is None:
        load_limit = common_types.LoadLimit()
    return SidecarLimit(
        value=load_limit.value,
        is_active=load_limit.is_active,
        duration_s=load_limit.duration_nanoseconds / NANOSECONDS,
        is_changeable=load_limit.is_changeable,
    )


def limit_to_wire(limit: SidecarLimit) -> common_types.LoadLimit:
    return common_types.LoadLimit(
        duration_nanoseconds=_seconds_to_ns(limit.duration_s),
        is_changeable=limit.is_changeable,
        is_active=limit.is_active,
        value=limit.value,
    )


def _seconds_to_ns(seconds: float) -> int:
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds}")
    return round(seconds * NANOSECONDS)


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SidecarRpcError("AddUseCase", "OK", f"unusable endpoint {endpoint!r}")
    return host, int(port)


class SidecarClient:
    """gRPC connection to one sidecar: the control service plus, once added, the cs_lpc service.

    Use inside an open trio-asyncio loop; `close()` (shielded, time-boxed) releases the channels.
    """

    def __init__(self, host: str, port: int, rpc_timeout_s: float) -> None:
        self._host = host
        self._port = port
        self._timeout = rpc_timeout_s
        self._control_channel: grpclib.client.Channel | None = None
        self._lpc_channel: grpclib.client.Channel | None = None
        self._control: cs.ControlServiceStub | None = None
        self._lpc: cs_lpc.ControllableSystemLpcControlStub | None = None

    async def __aenter__(self) -> SidecarClient:
        await trio_asyncio.aio_as_trio(self._open_control)()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _open_control(self) -> None:
        self._control_channel = grpclib.client.Channel(self._host, self._port)
        self._control = cs.ControlServiceStub(self._control_channel, timeout=self._timeout)

    async def close(self) -> None:
        """Close both channels; safe to call from a cancelled scope."""

        # Channel.close() is synchronous but must run on the asyncio side.
        async def _aio_close() -> None:
            for channel in (self._lpc_channel, self._control_channel):
                if channel is not None:
                    channel.close()

        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await trio_asyncio.aio_as_trio(_aio_close)()
        self._lpc_channel = self._control_channel = None

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, rpc: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one unary RPC on the asyncio side and translate its failures."""

        async def _aio() -> T:
            return await fn()

        # The grpclib deadline is the real one; the Trio bound is a backstop for a stuck loop.
        with trio.move_on_after(self._timeout + 1.0) as backstop:
            try:
                result: T = await trio_asyncio.aio_as_trio(_aio)()
                return result
            except grpclib.exceptions.GRPCError as exc:
                if exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
                    raise SidecarUnreachable(f"{rpc}: {exc.status.name} {exc.message}") from exc
                raise SidecarRpcError(rpc, exc.status.name, exc.message or "") from exc
            except (TimeoutError, OSError, grpclib.exceptions.StreamTerminatedError) as exc:
                raise SidecarUnreachable(f"{rpc}: {type(exc).__name__} {exc}".strip()) from exc
        assert backstop.cancelled_caught
        raise SidecarUnreachable(f"{rpc}: no answer within {self._timeout + 1.0:.1f} s")

    def _control_stub(self) -> cs.ControlServiceStub:
        if self._control is None:
            raise SidecarUnreachable("control channel is not open")
        return self._control

    def _lpc_stub(self) -> cs_lpc.ControllableSystemLpcControlStub:
        if self._lpc is None:
            raise SidecarUnreachable("the LPC endpoint is not connected")
        return self._lpc

    # -- control service --------------------------------------------------------------------

    async def set_config(self, request: cs.SetConfigRequest) -> None:
        await self._call("SetConfig", lambda: self._control_stub().set_config(request))

    async def start_setup(self) -> None:
        await self._call("StartSetup", lambda: self._control_stub().start_setup())

    async def register_remote_ski(self, ski: str) -> None:
        request = cs.RegisterRemoteSkiRequest(remote_ski=ski)
        await self._call(
            "RegisterRemoteSki", lambda: self._control_stub().register_remote_ski(request)
        )

    async def add_use_case(self) -> str:
        request = cs.AddUseCaseRequest(entity_address=LPC_ENTITY, use_case=LPC_USE_CASE)
        response = await self._call(
            "AddUseCase", lambda: self._control_stub().add_use_case(request)
        )
        return response.endpoint

    async def start_service(self) -> None:
        await self._call("StartService", lambda: self._control_stub().start_service())

    async def connect_lpc(self, endpoint: str) -> None:
        host, port = _parse_endpoint(endpoint)

        async def _open() -> None:
            if self._lpc_channel is not None:
                self._lpc_channel.close()
            self._lpc_channel = grpclib.client.Channel(host, port)
            self._lpc = cs_lpc.ControllableSystemLpcControlStub(
                self._lpc_channel, timeout=self._timeout
            )

        await trio_asyncio.aio_as_trio(_open)()

    # -- cs_lpc service ---------------------------------------------------------------------

    async def set_consumption_nominal_max(self, value_w: float) -> None:
        request = cs_lpc.SetConsumptionNominalMaxRequest(value=value_w)
        await self._call(
            "SetConsumptionNominalMax",
            lambda: self._lpc_stub().set_consumption_nominal_max(request),
        )

    async def set_consumption_limit(self, limit: SidecarLimit) -> None:
        request = cs_lpc.SetConsumptionLimitRequest(load_limit=limit_to_wire(limit))
        await self._call(
            "SetConsumptionLimit", lambda: self._lpc_stub().set_consumption_limit(request)
        )

    async def set_failsafe_limit(self, value_w: float) -> None:
        request = cs_lpc.SetFailsafeConsumptionActivePowerLimitRequest(
            value=value_w, is_changeable=True
        )
        await self._call(
            "SetFailsafeConsumptionActivePowerLimit",
            lambda: self._lpc_stub().set_failsafe_consumption_active_power_limit(request),
        )

    async def set_failsafe_duration(self, duration_s: float) -> None:
        request = cs_lpc.SetFailsafeDurationMinimumRequest(
            duration_nanoseconds=_seconds_to_ns(duration_s), is_changeable=True
        )
        await self._call(
            "SetFailsafeDurationMinimum",
            lambda: self._lpc_stub().set_failsafe_duration_minimum(request),
        )

    async def start_heartbeat(self) -> None:
        await self._call("StartHeartbeat", lambda: self._lpc_stub().start_heartbeat())

    async def consumption_limit(self) -> SidecarLimit:
        response = await self._call(
            "ConsumptionLimit", lambda: self._lpc_stub().consumption_limit()
        )
        return limit_from_wire(response.load_limit)

    async def pending_consumption_limits(self) -> list[tuple[int, SidecarLimit]]:
        response = await self._call(
            "PendingConsumptionLimit", lambda: self._lpc_stub().pending_consumption_limit()
        )
        return sorted((int(k), limit_from_wire(v)) for k, v in response.load_limits.items())

    async def approve_or_deny(self, msg_counter: int, approve: bool, reason: str) -> None:
        request = cs_lpc.ApproveOrDenyConsumptionLimitRequest(
            msg_counter=msg_counter, approve=approve, reason=reason
        )
        await self._call(
            "ApproveOrDenyConsumptionLimit",
            lambda: self._lpc_stub().approve_or_deny_consumption_limit(request),
        )

    async def failsafe_limit(self) -> float:
        response = await self._call(
            "FailsafeConsumptionActivePowerLimit",
            lambda: self._lpc_stub().failsafe_consumption_active_power_limit(),
        )
        return response.limit

    async def failsafe_duration(self) -> float:
        response = await self._call(
            "FailsafeDurationMinimum", lambda: self._lpc_stub().failsafe_duration_minimum()
        )
        return response.duration_nanoseconds / NANOSECONDS

    async def is_heartbeat_within_duration(self) -> bool:
        response = await self._call(
            "IsHeartbeatWithinDuration", lambda: self._lpc_stub().is_heartbeat_within_duration()
        )
        return response.is_within_duration

    # -- streams ---------------------------------------------------------------------------

    async def stream_use_case_events(
        self, out: trio.MemorySendChannel[UseCaseEvent], subscribed: trio.Event
    ) -> None:
        """Read SubscribeUseCaseEvents into `out`; `subscribed` is set once the request is sent.

        Never returns normally: raises SidecarUnreachable/SidecarRpcError when the stream ends
        (the real sidecar never ends it by itself).
        """
        request = cs.SubscribeUseCaseEventsRequest(entity_address=LPC_ENTITY, use_case=LPC_USE_CASE)

        def convert(msg: cs.SubscribeUseCaseEventsResponse) -> UseCaseEvent:
            event = msg.use_case_event.event if msg.use_case_event is not None else ""
            return UseCaseEvent(name=event, ski=msg.remote_ski)

        await self._stream(
            "SubscribeUseCaseEvents",
            request,
            cs.SubscribeUseCaseEventsResponse,
            convert,
            out,
            subscribed,
        )

    async def stream_discovery_events(
        self, out: trio.MemorySendChannel[DiscoveryEvent], subscribed: trio.Event
    ) -> None:
        """Like stream_use_case_events, for SubscribeDiscoveryEvents."""

        def convert(msg: cs.DiscoveryEvent) -> DiscoveryEvent:
            try:
                kind = cs.DiscoveryEventType(msg.type).name or "UNKNOWN"
            except ValueError:
                kind = "UNKNOWN"
            return DiscoveryEvent(
                kind=kind,
                ski=msg.remote_ski,
                is_trusted=msg.is_trusted,
                brand=msg.brand,
                model=msg.model,
                device_type=msg.device_type,
            )

        await self._stream(
            "SubscribeDiscoveryEvents",
            cs.SubscribeDiscoveryEventsRequest(),
            cs.DiscoveryEvent,
            convert,
            out,
            subscribed,
        )

    async def _stream(
        self,
        rpc: str,
        request: Any,
        response_type: type[Any],
        convert: Callable[[Any], T],
        out: trio.MemorySendChannel[T],
        subscribed: trio.Event,
    ) -> None:
        # One asyncio task per stream; it hands messages to Trio without awaiting unless the
        # channel is full (stack-notes: ~13k events/s this way). grpclib's request() is used
        # directly so that we know when the subscription request has gone out: the handshake
        # order (subscribe, then StartService) depends on it.
        send_when_full = trio_asyncio.trio_as_aio(out.send)
        route = f"/control_service.ControlService/{rpc}"

        async def _aio() -> None:
            if self._control_channel is None:
                raise SidecarUnreachable("control channel is not open")
            async with self._control_channel.request(
                route, Cardinality.UNARY_STREAM, type(request), response_type
            ) as stream:
                await stream.send_message(request, end=True)
                subscribed.set()
                async for message in stream:
                    item = convert(message)
                    try:
                        out.send_nowait(item)
                    except trio.WouldBlock:
                        await send_when_full(item)

        try:
            await trio_asyncio.aio_as_trio(_aio)()
        except grpclib.exceptions.GRPCError as exc:
            raise SidecarRpcError(rpc, exc.status.name, exc.message or "") from exc
        except (TimeoutError, OSError, grpclib.exceptions.StreamTerminatedError) as exc:
            raise SidecarUnreachable(f"{rpc}: {type(exc).__name__} {exc}".strip()) from exc
        raise SidecarUnreachable(f"{rpc}: the sidecar ended the stream")
