"""The gRPC client of the eebus_grpc_api sidecar, seen from Trio.

grpclib is asyncio-only, so this module is the one asyncio island of the bridge (trio-asyncio):
every grpclib object is created and used inside `aio_as_trio`, and nothing else in the package
imports grpclib or asyncio. Callers get plain Trio coroutines, values as `SidecarLimit` floats in
seconds, and two exception types: `SidecarRpcError` (the sidecar answered with an error) and
`SidecarUnreachable` (no answer: refused, reset, or past the deadline).

Every unary call has a deadline (rpc_timeout_s): a hung sidecar must surface as an error instead
of freezing the bridge (stack-notes: grpclib never notices a stopped server by itself).

Use-case events are dispatched where they arrive, on the asyncio side (`run_use_case_events`),
so that the value an event announces is read without crossing back to Trio first. Each event
takes one of three lanes, chosen by the caller's `EventLanes.route` (plain, synchronous code):

- apply: no read needed (heartbeats, support updates); handed over at once;
- data: one asyncio task reads the announced values one at a time, in arrival order, and hands
  each over with its value. A read that is already queued for the same event and SKI is not
  queued twice (it will return the newest value anyway), so the queue stays small;
- approval: a second asyncio task reads the pending writes after each WriteApprovalRequired
  (again one read at a time, queued reads merged the same way: a burst of writes needs one or
  two reads, not one each), asks `EventLanes.decide` and sends every answer in its own task.
  It never waits for the data lane, for an answer, or for any other RPC in flight; each RPC
  keeps its own deadline [spec/lpc.md: every pending write gets an answer well within 10 s,
  also while other work is in flight].
"""

from __future__ import annotations

# trio_asyncio before grpclib: grpclib keeps a reference to asyncio.current_task at import, and
# on Python >= 3.12 only trio_asyncio's replacement of it sees trio-asyncio's loop.
import trio_asyncio  # isort: skip

import asyncio
import enum
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import grpclib.client
import grpclib.exceptions
import trio
from grpclib.const import Cardinality, Status

from eebus_bridge.generated import common_types, cs_lpc
from eebus_bridge.generated import control_service as cs
from eebus_bridge.lpc import Answer, SidecarLimit

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


class EventRoute(enum.Enum):
    """Where a use-case event goes (see the module docstring)."""

    DROP = "drop"
    APPLY = "apply"
    DATA = "data"
    APPROVAL = "approval"


# The read each data event announces (spec/wire.md, events table).
DATA_READS: dict[str, str] = {
    "DataUpdateLimit": "ConsumptionLimit",
    "DataUpdateFailsafeConsumptionActivePowerLimit": "FailsafeConsumptionActivePowerLimit",
    "DataUpdateFailsafeDurationMinimum": "FailsafeDurationMinimum",
}

EventValue = SidecarLimit | float | None
PendingWrites = Sequence[tuple[int, SidecarLimit]]


class EventLanes(Protocol):
    """What the event lanes ask of their owner; every method is synchronous and is called on
    the asyncio side of the island (the Trio thread)."""

    def route(self, event: UseCaseEvent) -> EventRoute:
        """Choose the lane; DROP ends the event here, before any RPC."""

    def apply(self, event: UseCaseEvent, value: EventValue, received_at: float) -> None:
        """Hand over an event with the value read for it (None on the apply lane);
        received_at = when the event arrived (Trio clock)."""

    def needs_heartbeat_check(self) -> bool:
        """True when the answer to a write may depend on IsHeartbeatWithinDuration."""

    def decide(
        self, event: UseCaseEvent, pending: PendingWrites, heartbeat_within: bool | None
    ) -> list[Answer]:
        """The answers to these pending writes."""

    def rpc_refused(self, event: UseCaseEvent, error: SidecarRpcError) -> None:
        """A read or answer for this event got an error status (logged; the lane goes on)."""


class _ReadQueue:
    """The data lane's queue (asyncio side): arrival order, one entry per (event, SKI)."""

    def __init__(self) -> None:
        self._items: deque[tuple[UseCaseEvent, float]] = deque()
        self._queued: set[UseCaseEvent] = set()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: UseCaseEvent) -> None:
        """Callable from either side of the island (resolving a future only schedules)."""
        if event in self._queued:
            return
        self._queued.add(event)
        self._items.append((event, trio.current_time()))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> tuple[UseCaseEvent, float]:
        """The oldest queued event and when it (first) arrived."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event, received_at = self._items.popleft()
        self._queued.discard(event)
        return event, received_at


class CoalescingTransport:
    """An asyncio transport proxy that sends what grpclib writes within one loop step in one go.

    grpclib writes each HTTP/2 frame of a call separately (request HEADERS, then DATA; a server
    also sends trailers), and asyncio sends each write at once with TCP_NODELAY: two or three
    segments per call, each waking the peer. Joined at the end of the step, the call is one
    segment and one wake-up, which halves the per-call cost on loopback. Nothing waits longer
    than the current loop step. Used by the client below and by the HEMS simulator's servers.
    """

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing_protocol(protocol: T, loop: asyncio.AbstractEventLoop) -> T:
    """Make an asyncio protocol (grpclib's H2Protocol) write through a CoalescingTransport."""
    made = protocol.connection_made  # type: ignore[attr-defined]

    def connection_made(transport: asyncio.Transport) -> None:
        made(CoalescingTransport(transport, loop))

    protocol.connection_made = connection_made  # type: ignore[attr-defined]
    return protocol


class _Channel(grpclib.client.Channel):
    """grpclib's Channel, writing each call's frames in one segment (CoalescingTransport)."""

    def _protocol_factory(self) -> Any:
        return coalescing_protocol(super()._protocol_factory(), self._loop)


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
        self._reads: _ReadQueue | None = None  # the data lane's queue while events stream

    async def __aenter__(self) -> SidecarClient:
        await trio_asyncio.aio_as_trio(self._open_control)()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _open_control(self) -> None:
        self._control_channel = _Channel(self._host, self._port)
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

    @staticmethod
    async def _aio_call(rpc: str, fn: Callable[[], Awaitable[T]]) -> T:
        """asyncio side: one unary RPC under grpclib's deadline, failures translated."""
        try:
            return await fn()
        except grpclib.exceptions.GRPCError as exc:
            if exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
                raise SidecarUnreachable(f"{rpc}: {exc.status.name} {exc.message}") from exc
            raise SidecarRpcError(rpc, exc.status.name, exc.message or "") from exc
        except (TimeoutError, OSError, grpclib.exceptions.StreamTerminatedError) as exc:
            raise SidecarUnreachable(f"{rpc}: {type(exc).__name__} {exc}".strip()) from exc

    async def _call(self, rpc: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one unary RPC on the asyncio side, from Trio."""
        # The grpclib deadline is the real one; the Trio bound is a backstop for a stuck loop.
        with trio.move_on_after(self._timeout + 1.0):
            result: T = await trio_asyncio.aio_as_trio(self._aio_call)(rpc, fn)
            return result
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
            self._lpc_channel = _Channel(host, port)
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
        return await self._call("ConsumptionLimit", self._aio_consumption_limit)

    async def _aio_consumption_limit(self) -> SidecarLimit:
        response = await self._lpc_stub().consumption_limit()
        return limit_from_wire(response.load_limit)

    async def pending_consumption_limits(self) -> list[tuple[int, SidecarLimit]]:
        return await self._call("PendingConsumptionLimit", self._aio_pending_consumption_limits)

    async def _aio_pending_consumption_limits(self) -> list[tuple[int, SidecarLimit]]:
        response = await self._lpc_stub().pending_consumption_limit()
        return sorted((int(k), limit_from_wire(v)) for k, v in response.load_limits.items())

    async def approve_or_deny(self, msg_counter: int, approve: bool, reason: str) -> None:
        await self._call(
            "ApproveOrDenyConsumptionLimit",
            lambda: self._aio_approve_or_deny(msg_counter, approve, reason),
        )

    async def _aio_answer(self, answer: Answer) -> None:
        await self._aio_call(
            "ApproveOrDenyConsumptionLimit",
            lambda: self._aio_approve_or_deny(answer.msg_counter, answer.approve, answer.reason),
        )

    async def _aio_approve_or_deny(self, msg_counter: int, approve: bool, reason: str) -> None:
        request = cs_lpc.ApproveOrDenyConsumptionLimitRequest(
            msg_counter=msg_counter, approve=approve, reason=reason
        )
        await self._lpc_stub().approve_or_deny_consumption_limit(request)

    async def failsafe_limit(self) -> float:
        return await self._call("FailsafeConsumptionActivePowerLimit", self._aio_failsafe_limit)

    async def _aio_failsafe_limit(self) -> float:
        response = await self._lpc_stub().failsafe_consumption_active_power_limit()
        return response.limit

    async def failsafe_duration(self) -> float:
        return await self._call("FailsafeDurationMinimum", self._aio_failsafe_duration)

    async def _aio_failsafe_duration(self) -> float:
        response = await self._lpc_stub().failsafe_duration_minimum()
        return response.duration_nanoseconds / NANOSECONDS

    async def is_heartbeat_within_duration(self) -> bool:
        return await self._call("IsHeartbeatWithinDuration", self._aio_is_heartbeat_within)

    async def _aio_is_heartbeat_within(self) -> bool:
        response = await self._lpc_stub().is_heartbeat_within_duration()
        return response.is_within_duration

    # -- streams ---------------------------------------------------------------------------

    def queue_rereads(self) -> None:
        """Queue a re-read of the limit and both failsafe values on the data lane, as events
        without a source (ski ""): after a reconnect events may have been lost, and through the
        lane the re-reads are applied in order with the reads of live events."""
        if self._reads is None:
            raise SidecarUnreachable("the use-case event stream is not running")
        for name in DATA_READS:
            self._reads.put(UseCaseEvent(name=name, ski=""))

    async def run_use_case_events(self, lanes: EventLanes, subscribed: trio.Event) -> None:
        """Read SubscribeUseCaseEvents and dispatch every event to its lane (module docstring);
        `subscribed` is set once the request is sent.

        Never returns normally: raises SidecarUnreachable/SidecarRpcError when the stream ends
        (the real sidecar never ends it by itself) or a lane's RPC finds the sidecar gone.
        """
        request = cs.SubscribeUseCaseEventsRequest(entity_address=LPC_ENTITY, use_case=LPC_USE_CASE)
        route = "/control_service.ControlService/SubscribeUseCaseEvents"
        reads, approvals = _ReadQueue(), _ReadQueue()

        async def _aio() -> None:
            if self._control_channel is None:
                raise SidecarUnreachable("control channel is not open")
            async with asyncio.TaskGroup() as lane_tasks:
                lane_tasks.create_task(self._data_lane(reads, lanes))
                lane_tasks.create_task(self._approval_lane(approvals, lanes, lane_tasks))
                async with self._control_channel.request(
                    route,
                    Cardinality.UNARY_STREAM,
                    cs.SubscribeUseCaseEventsRequest,
                    cs.SubscribeUseCaseEventsResponse,
                ) as stream:
                    await stream.send_message(request, end=True)
                    self._reads = reads
                    subscribed.set()
                    async for message in stream:
                        use_case_event = message.use_case_event
                        event = UseCaseEvent(
                            name=use_case_event.event if use_case_event is not None else "",
                            ski=message.remote_ski,
                        )
                        lane = lanes.route(event)
                        if lane is EventRoute.APPLY:
                            lanes.apply(event, None, trio.current_time())
                        elif lane is EventRoute.DATA:
                            reads.put(event)
                        elif lane is EventRoute.APPROVAL:
                            approvals.put(event)
                raise SidecarUnreachable("SubscribeUseCaseEvents: the sidecar ended the stream")

        try:
            await self._aio_stream("SubscribeUseCaseEvents", _aio)
        finally:
            self._reads = None

    async def _data_lane(self, reads: _ReadQueue, lanes: EventLanes) -> None:
        readers: dict[str, Callable[[], Awaitable[EventValue]]] = {
            "ConsumptionLimit": self._aio_consumption_limit,
            "FailsafeConsumptionActivePowerLimit": self._aio_failsafe_limit,
            "FailsafeDurationMinimum": self._aio_failsafe_duration,
        }
        while True:
            event, received_at = await reads.get()
            rpc = DATA_READS[event.name]
            try:
                value = await self._aio_call(rpc, readers[rpc])
            except SidecarRpcError as exc:
                lanes.rpc_refused(event, exc)
                continue
            lanes.apply(event, value, received_at)

    async def _approval_lane(
        self, asks: _ReadQueue, lanes: EventLanes, answers: asyncio.TaskGroup
    ) -> None:
        """Read the pending writes for each WriteApprovalRequired (one read at a time: a burst
        of events needs one read, not one each, and a queued read still follows any write that
        came after the read in flight), let the engine decide, and send every answer in its
        own task, so that the next read never waits for an answer."""
        while True:
            event, _ = await asks.get()
            try:
                pending = await self._aio_call(
                    "PendingConsumptionLimit", self._aio_pending_consumption_limits
                )
                heartbeat_within: bool | None = None
                if pending and lanes.needs_heartbeat_check():
                    heartbeat_within = await self._aio_call(
                        "IsHeartbeatWithinDuration", self._aio_is_heartbeat_within
                    )
            except SidecarRpcError as exc:
                lanes.rpc_refused(event, exc)
                continue
            for answer in lanes.decide(event, pending, heartbeat_within):
                answers.create_task(self._send_answer(event, answer, lanes))

    async def _send_answer(self, event: UseCaseEvent, answer: Answer, lanes: EventLanes) -> None:
        try:
            await self._aio_answer(answer)
        except SidecarRpcError as exc:
            lanes.rpc_refused(event, exc)

    async def stream_discovery_events(
        self, out: trio.MemorySendChannel[DiscoveryEvent], subscribed: trio.Event
    ) -> None:
        """Read SubscribeDiscoveryEvents into `out`; `subscribed` is set once the request is
        sent. Never returns normally (like run_use_case_events)."""

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

        await self._aio_stream(rpc, _aio)
        raise SidecarUnreachable(f"{rpc}: the sidecar ended the stream")

    @staticmethod
    async def _aio_stream(rpc: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run a stream's asyncio side from Trio; failures translated (also out of a group of
        lane tasks: the first sidecar failure in it is the cause, the rest are its echoes)."""
        try:
            await trio_asyncio.aio_as_trio(fn)()
        except (Exception, BaseExceptionGroup) as exc:
            failure = _stream_failure(rpc, exc)
            if failure is exc:
                raise
            raise failure from exc


def _stream_failure(rpc: str, exc: BaseException) -> BaseException:
    if isinstance(exc, BaseExceptionGroup):
        for leaf in exc.exceptions:
            failure = _stream_failure(rpc, leaf)
            if isinstance(failure, SidecarUnreachable | SidecarRpcError):
                return failure
        return exc
    if isinstance(exc, SidecarUnreachable | SidecarRpcError):
        return exc
    if isinstance(exc, grpclib.exceptions.GRPCError):
        return SidecarRpcError(rpc, exc.status.name, exc.message or "")
    if isinstance(exc, TimeoutError | OSError | grpclib.exceptions.StreamTerminatedError):
        return SidecarUnreachable(f"{rpc}: {type(exc).__name__} {exc}".strip())
    return exc
