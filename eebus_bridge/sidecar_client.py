"""The gRPC client of the eebus_grpc_api sidecar, seen from Trio.

The gRPC stacks are asyncio-only, so this module and its transports (grpc_transport.py: grpclib
by default, grpcio's asyncio API when configured) are the one asyncio island of the bridge
(trio-asyncio): every channel is created and used inside `aio_as_trio`, and nothing else in the
package touches asyncio. Messages cross the transport as bytes and are encoded and decoded
here, the same way for both stacks. Callers get plain Trio coroutines, values as `SidecarLimit`
floats in seconds, and two exception types: `SidecarRpcError` (the sidecar answered with an
error) and `SidecarUnreachable` (no answer: refused, reset, or past the deadline).

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
  two reads, not one each), asks `EventLanes.decide` and sends every answer in its own task
  (calling `EventLanes.answers_sent` once the request has left, so the engine's reports of the
  decision do not delay it).
  It never waits for the data lane, for an answer, or for any other RPC in flight; each RPC
  keeps its own deadline [spec/lpc.md: every pending write gets an answer well within 10 s,
  also while other work is in flight].

Bytes from the sidecar are untrusted (issue 13.4). A message that does not decode (invalid
UTF-8 in a string, a truncated field) is one bad answer: a unary call raises SidecarRpcError
(status UNDECODABLE), a stream drops that message with a warning and reads on. A stream whose
framing breaks (closed in the middle of a message, a compressed flag nobody negotiated) cannot be
read any further: the transport raises SidecarProtocolError (grpclib) or a SidecarRpcError with
grpcio's status (its C core says UNKNOWN, "Stream removed"), and either way the connection is set
up again. Values out of range and unknown enum numbers decode fine and are judged by the engine
and the event dispatch.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import betterproto2
import trio
import trio_asyncio

from eebus_bridge.generated import common_types, cs_lpc
from eebus_bridge.generated import control_service as cs
from eebus_bridge.grpc_transport import (  # the exceptions are re-exported
    ServerStream,
    SidecarProtocolError,
    SidecarRpcError,
    SidecarUnreachable,
    Transport,
    TransportName,
    open_transport,
)
from eebus_bridge.lpc import Answer, SidecarLimit

__all__ = [
    "ALREADY_RUNNING",
    "NOT_IN_SETUP",
    "DiscoveryEvent",
    "EventLanes",
    "EventRoute",
    "SidecarClient",
    "SidecarProtocolError",
    "SidecarRpcError",
    "SidecarUnreachable",
    "UseCaseEvent",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=betterproto2.Message)

CONTROL_SERVICE = "/control_service.ControlService/"
LPC_SERVICE = "/cs_lpc.ControllableSystemLPCControl/"

NANOSECONDS = 1_000_000_000
LPC_ENTITY = common_types.EntityAddress(entity_address=[1])
LPC_USE_CASE = cs.UseCase(
    actor=cs.UseCaseActorTypeEnum.ControllableSystem,
    name=cs.UseCaseNameTypeEnum.limitationOfPowerConsumption,
)
# Error texts of the real sidecar that the handshake reacts to (spec/wire.md).
NOT_IN_SETUP = "Service is not in setup state"
ALREADY_RUNNING = "Service is already running"


# What decoding a message from the wire raises for bytes that are not a valid message
# (betterproto2: UnicodeDecodeError is a ValueError, EOFError for truncated fields).
_UNDECODABLE = (ValueError, EOFError, struct.error)


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
        """The answers to these pending writes; call `answers_sent` once they are sent."""

    def answers_sent(self) -> None:
        """The answers `decide` returned are on their way (or failed): the engine's reports of
        that decision (log lines, activity records) are made now (lpc_runner.py)."""

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


def discovery_event(msg: cs.DiscoveryEvent) -> DiscoveryEvent:
    """A SubscribeDiscoveryEvents message as the bridge uses it (unknown types: "UNKNOWN")."""
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
    `transport` names the HTTP/2 stack (grpc_transport.py); both behave the same here.
    """

    def __init__(
        self, host: str, port: int, rpc_timeout_s: float, transport: TransportName = "grpclib"
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = rpc_timeout_s
        self._transport_name: TransportName = transport
        self._control: Transport | None = None
        self._lpc: Transport | None = None
        self._reads: _ReadQueue | None = None  # the data lane's queue while events stream

    async def __aenter__(self) -> SidecarClient:
        await trio_asyncio.aio_as_trio(self._open_control)()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _open_control(self) -> None:
        self._control = open_transport(self._transport_name, self._host, self._port)

    async def close(self) -> None:
        """Close both channels; safe to call from a cancelled scope."""
        channels = [c for c in (self._lpc, self._control) if c is not None]
        self._lpc = self._control = None

        async def _aio_close() -> None:
            for channel in channels:
                await channel.aclose()

        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await trio_asyncio.aio_as_trio(_aio_close)()

    # -- plumbing ---------------------------------------------------------------------------

    def _channel(self, service: str) -> Transport:
        channel = self._lpc if service == LPC_SERVICE else self._control
        if channel is None:
            if service == LPC_SERVICE:
                raise SidecarUnreachable("the LPC endpoint is not connected")
            raise SidecarUnreachable("control channel is not open")
        return channel

    async def _aio_call(
        self,
        service: str,
        rpc: str,
        request: Any,
        response: type[M],
        on_sent: Callable[[], None] | None = None,
    ) -> M:
        """asyncio side: one unary RPC under the transport's deadline, failures translated
        (on_sent: see Transport.unary)."""
        answer = await self._channel(service).unary(
            rpc, service + rpc, bytes(request), self._timeout, on_sent
        )
        try:
            return response.parse(answer)
        except _UNDECODABLE as exc:
            raise SidecarRpcError(
                rpc, "UNDECODABLE", f"the sidecar's answer is not a valid message ({exc})"
            ) from exc

    async def _from_trio(self, rpc: str, aio_fn: Callable[[], Awaitable[T]]) -> T:
        """Run `aio_fn` (one unary RPC and what it makes of the answer) on the asyncio side,
        from Trio."""
        # The transport's deadline is the real one; the Trio bound is a backstop for a stuck loop.
        with trio.move_on_after(self._timeout + 1.0):
            result: T = await trio_asyncio.aio_as_trio(aio_fn)()
            return result
        raise SidecarUnreachable(f"{rpc}: no answer within {self._timeout + 1.0:.1f} s")

    async def _call(self, service: str, rpc: str, request: Any, response: type[M]) -> M:
        """One unary RPC from Trio (`_aio_call` under the Trio backstop)."""
        return await self._from_trio(rpc, lambda: self._aio_call(service, rpc, request, response))

    # -- control service --------------------------------------------------------------------

    async def set_config(self, request: cs.SetConfigRequest) -> None:
        await self._call(CONTROL_SERVICE, "SetConfig", request, cs.EmptyResponse)

    async def start_setup(self) -> None:
        await self._call(CONTROL_SERVICE, "StartSetup", cs.EmptyRequest(), cs.EmptyResponse)

    async def register_remote_ski(self, ski: str) -> None:
        request = cs.RegisterRemoteSkiRequest(remote_ski=ski)
        await self._call(CONTROL_SERVICE, "RegisterRemoteSki", request, cs.EmptyResponse)

    async def add_use_case(self) -> str:
        request = cs.AddUseCaseRequest(entity_address=LPC_ENTITY, use_case=LPC_USE_CASE)
        response = await self._call(CONTROL_SERVICE, "AddUseCase", request, cs.AddUseCaseResponse)
        return response.endpoint

    async def start_service(self) -> None:
        await self._call(CONTROL_SERVICE, "StartService", cs.EmptyRequest(), cs.EmptyResponse)

    async def connect_lpc(self, endpoint: str) -> None:
        host, port = _parse_endpoint(endpoint)
        old, self._lpc = self._lpc, None

        async def _open() -> None:
            if old is not None:
                await old.aclose()
            self._lpc = open_transport(self._transport_name, host, port)

        await trio_asyncio.aio_as_trio(_open)()

    # -- cs_lpc service ---------------------------------------------------------------------

    async def set_consumption_nominal_max(self, value_w: float) -> None:
        await self._call(
            LPC_SERVICE,
            "SetConsumptionNominalMax",
            cs_lpc.SetConsumptionNominalMaxRequest(value=value_w),
            cs_lpc.SetConsumptionNominalMaxResponse,
        )

    async def set_consumption_limit(self, limit: SidecarLimit) -> None:
        await self._call(
            LPC_SERVICE,
            "SetConsumptionLimit",
            cs_lpc.SetConsumptionLimitRequest(load_limit=limit_to_wire(limit)),
            cs_lpc.SetConsumptionLimitResponse,
        )

    async def set_failsafe_limit(self, value_w: float) -> None:
        await self._call(
            LPC_SERVICE,
            "SetFailsafeConsumptionActivePowerLimit",
            cs_lpc.SetFailsafeConsumptionActivePowerLimitRequest(value=value_w, is_changeable=True),
            cs_lpc.SetFailsafeConsumptionActivePowerLimitResponse,
        )

    async def set_failsafe_duration(self, duration_s: float) -> None:
        await self._call(
            LPC_SERVICE,
            "SetFailsafeDurationMinimum",
            cs_lpc.SetFailsafeDurationMinimumRequest(
                duration_nanoseconds=_seconds_to_ns(duration_s), is_changeable=True
            ),
            cs_lpc.SetFailsafeDurationMinimumResponse,
        )

    async def start_heartbeat(self) -> None:
        await self._call(
            LPC_SERVICE,
            "StartHeartbeat",
            cs_lpc.StartHeartbeatRequest(),
            cs_lpc.StartHeartbeatResponse,
        )

    async def consumption_limit(self) -> SidecarLimit:
        return await self._from_trio("ConsumptionLimit", self._aio_consumption_limit)

    async def _aio_consumption_limit(self) -> SidecarLimit:
        response = await self._aio_call(
            LPC_SERVICE,
            "ConsumptionLimit",
            cs_lpc.ConsumptionLimitRequest(),
            cs_lpc.ConsumptionLimitResponse,
        )
        return limit_from_wire(response.load_limit)

    async def pending_consumption_limits(self) -> list[tuple[int, SidecarLimit]]:
        return await self._from_trio(
            "PendingConsumptionLimit", self._aio_pending_consumption_limits
        )

    async def _aio_pending_consumption_limits(self) -> list[tuple[int, SidecarLimit]]:
        response = await self._aio_call(
            LPC_SERVICE,
            "PendingConsumptionLimit",
            cs_lpc.PendingConsumptionLimitRequest(),
            cs_lpc.PendingConsumptionLimitResponse,
        )
        return sorted((int(k), limit_from_wire(v)) for k, v in response.load_limits.items())

    async def approve_or_deny(self, msg_counter: int, approve: bool, reason: str) -> None:
        answer = Answer(msg_counter=msg_counter, approve=approve, reason=reason)
        await self._from_trio("ApproveOrDenyConsumptionLimit", lambda: self._aio_answer(answer))

    async def _aio_answer(self, answer: Answer, on_sent: Callable[[], None] | None = None) -> None:
        await self._aio_call(
            LPC_SERVICE,
            "ApproveOrDenyConsumptionLimit",
            cs_lpc.ApproveOrDenyConsumptionLimitRequest(
                msg_counter=answer.msg_counter, approve=answer.approve, reason=answer.reason
            ),
            cs_lpc.ApproveOrDenyConsumptionLimitResponse,
            on_sent,
        )

    async def failsafe_limit(self) -> float:
        return await self._from_trio(
            "FailsafeConsumptionActivePowerLimit", self._aio_failsafe_limit
        )

    async def _aio_failsafe_limit(self) -> float:
        response = await self._aio_call(
            LPC_SERVICE,
            "FailsafeConsumptionActivePowerLimit",
            cs_lpc.FailsafeConsumptionActivePowerLimitRequest(),
            cs_lpc.FailsafeConsumptionActivePowerLimitResponse,
        )
        return response.limit

    async def failsafe_duration(self) -> float:
        return await self._from_trio("FailsafeDurationMinimum", self._aio_failsafe_duration)

    async def _aio_failsafe_duration(self) -> float:
        response = await self._aio_call(
            LPC_SERVICE,
            "FailsafeDurationMinimum",
            cs_lpc.FailsafeDurationMinimumRequest(),
            cs_lpc.FailsafeDurationMinimumResponse,
        )
        return response.duration_nanoseconds / NANOSECONDS

    async def is_heartbeat_within_duration(self) -> bool:
        return await self._from_trio("IsHeartbeatWithinDuration", self._aio_is_heartbeat_within)

    async def _aio_is_heartbeat_within(self) -> bool:
        response = await self._aio_call(
            LPC_SERVICE,
            "IsHeartbeatWithinDuration",
            cs_lpc.IsHeartbeatWithinDurationRequest(),
            cs_lpc.IsHeartbeatWithinDurationResponse,
        )
        return response.is_within_duration

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
        rpc = "SubscribeUseCaseEvents"
        reads, approvals = _ReadQueue(), _ReadQueue()

        async def _aio() -> None:
            channel = self._channel(CONTROL_SERVICE)
            async with asyncio.TaskGroup() as lane_tasks:
                lane_tasks.create_task(self._data_lane(reads, lanes))
                lane_tasks.create_task(self._approval_lane(approvals, lanes, lane_tasks))
                async with channel.stream(rpc, CONTROL_SERVICE + rpc, bytes(request)) as stream:
                    self._reads = reads
                    subscribed.set()
                    async for message in _decoded_messages(
                        stream, rpc, cs.SubscribeUseCaseEventsResponse
                    ):
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
                    raise SidecarUnreachable(f"{rpc}: the sidecar ended the stream")

        try:
            await self._aio_stream(rpc, _aio)
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
            try:
                value = await readers[DATA_READS[event.name]]()
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
                pending = await self._aio_pending_consumption_limits()
                heartbeat_within: bool | None = None
                if pending and lanes.needs_heartbeat_check():
                    heartbeat_within = await self._aio_is_heartbeat_within()
            except SidecarRpcError as exc:
                lanes.rpc_refused(event, exc)
                continue
            for answer in lanes.decide(event, pending, heartbeat_within):
                answers.create_task(self._send_answer(event, answer, lanes))

    async def _send_answer(self, event: UseCaseEvent, answer: Answer, lanes: EventLanes) -> None:
        error: SidecarRpcError | None = None
        try:
            await self._aio_answer(answer, on_sent=lanes.answers_sent)
        except SidecarRpcError as exc:
            error = exc
        finally:
            lanes.answers_sent()  # failed or cancelled before the request left: report now
        if error is not None:
            lanes.rpc_refused(event, error)

    async def stream_discovery_events(
        self, out: trio.MemorySendChannel[DiscoveryEvent], subscribed: trio.Event
    ) -> None:
        """Read SubscribeDiscoveryEvents into `out`; `subscribed` is set once the request is
        sent. Never returns normally (like run_use_case_events)."""

        await self._stream(
            "SubscribeDiscoveryEvents",
            cs.SubscribeDiscoveryEventsRequest(),
            cs.DiscoveryEvent,
            discovery_event,
            out,
            subscribed,
        )

    async def _stream(
        self,
        rpc: str,
        request: Any,
        response_type: type[M],
        convert: Callable[[M], T],
        out: trio.MemorySendChannel[T],
        subscribed: trio.Event,
    ) -> None:
        # One asyncio task per stream; it hands messages to Trio without awaiting unless the
        # channel is full (stack-notes: ~13k events/s this way).
        send_when_full = trio_asyncio.trio_as_aio(out.send)

        async def _aio() -> None:
            channel = self._channel(CONTROL_SERVICE)
            async with channel.stream(rpc, CONTROL_SERVICE + rpc, bytes(request)) as stream:
                subscribed.set()
                async for message in _decoded_messages(stream, rpc, response_type):
                    item = convert(message)
                    try:
                        out.send_nowait(item)
                    except trio.WouldBlock:
                        await send_when_full(item)
                raise SidecarUnreachable(f"{rpc}: the sidecar ended the stream")

        await self._aio_stream(rpc, _aio)

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
    """The first sidecar failure in what a stream's asyncio side raised (also out of a group
    of lane tasks: the rest are its echoes); anything else is raised as it is."""
    if isinstance(exc, BaseExceptionGroup):
        for leaf in exc.exceptions:
            failure = _stream_failure(rpc, leaf)
            if isinstance(failure, SidecarUnreachable | SidecarRpcError):
                return failure
        return exc
    return exc


async def _decoded_messages(
    stream: ServerStream, rpc: str, response_type: type[M]
) -> AsyncIterator[M]:
    """asyncio side: a stream's messages, without those that do not decode (see the module
    docstring); the transport raises SidecarProtocolError when the framing breaks."""
    undecodable = 0
    while True:
        data = await stream.recv()
        if data is None:
            return
        try:
            message = response_type.parse(data)
        except _UNDECODABLE as exc:
            undecodable += 1
            log.log(
                logging.WARNING if undecodable == 1 else logging.DEBUG,
                "%s: dropped a message from the sidecar that does not decode (%s)%s",
                rpc,
                exc,
                "" if undecodable == 1 else f" ({undecodable} on this stream)",
            )
            continue
        yield message
