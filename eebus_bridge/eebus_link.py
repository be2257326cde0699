"""The eebus task: one gRPC connection to the sidecar, from handshake to failure.

`EebusLink.run()` connects, performs the handshake of spec/lpc.md in its exact order, then reads
the use-case event and discovery streams, turns each event (plus the values read for it) into an
engine input, and carries out the sidecar actions the lpc task decides. Any sign of a dead or hung
sidecar raises, which fails the supervised group; the next run starts from the handshake again.
The link object itself outlives runs only to remember the cs_lpc endpoint (see `_resume`).

Events (issue 13, items 1 and 2). `SidecarClient.run_use_case_events` dispatches each use-case
event where it arrives, on the asyncio side of the island, to a lane this module chooses
(`_EventLanes.route`, synchronous, before any RPC):

- Malformed events (an SKI that is empty or not 40 hex digits) are dropped with a rate-limited
  warning: nothing can be attributed to them, so they never change state, publish or make an
  EG the active one. (The bridge's own re-reads after a reconnect are not sidecar events; they
  keep the engine's "source unknown" meaning, ski "".)
- While an EG is active and the state is neither Failsafe nor Unlimited/autonomous, data events
  of any other EG are dropped before any read (the engine would refuse the value), logged once
  per EG per minute. A failsafe value such an EG wrote is not read, but the CS's own value is
  written back, as for any refused failsafe value (the sidecar took it without asking).
  Its writes still go to the approval lane and are denied at once, naming the active EG.
- WriteApprovalRequired takes the approval lane: read pending, decide, answer, concurrently with
  any other RPC in flight, each with its deadline.
- Data events take the data lane (reads one at a time, in order); heartbeats and support
  updates are applied at once.

Why the engine still sees a consistent order. Every input is applied synchronously
(`LpcRunner.apply`) at the moment its value is known, on the one Trio thread, so the engine's
inputs form a single sequence in real time. The sidecar reports no values in its events, only
that something changed, and guarantees no event order (spec/wire.md: one goroutine per event);
what matters is the order of the *values*. Values of one kind are read one at a time on the
data lane and applied in read order, so a later read (which sees the sidecar's newer state)
is always applied after an earlier one — also the re-reads after a reconnect, which go through
the same lane. An approval is decided on the engine's state at the moment the pending writes
are known; a limit read still in flight at that moment counts as not yet received, exactly as
if its DataUpdateLimit had come a little later, which the sidecar is free to do anyway. An
approval changes no state other than the active EG and the heartbeat it records, which no read
in flight depends on.
"""

from __future__ import annotations

import logging
import math

import trio

from eebus_bridge.config import Config
from eebus_bridge.generated import control_service as cs
from eebus_bridge.lpc import (
    Answer,
    Discovered,
    FailsafeDurationUpdated,
    FailsafeLimitUpdated,
    Heartbeat,
    LimitUpdated,
    RegisterSki,
    Removed,
    SendLocalData,
    SidecarLimit,
    UseCaseSupportUpdate,
    WriteApprovalRequired,
    WriteBackFailsafeDuration,
    WriteBackFailsafeLimit,
)
from eebus_bridge.lpc_runner import LpcRunner, SidecarAction
from eebus_bridge.sidecar_client import (
    ALREADY_RUNNING,
    NOT_IN_SETUP,
    DiscoveryEvent,
    EventRoute,
    EventValue,
    PendingWrites,
    SidecarClient,
    SidecarRpcError,
    SidecarUnreachable,
    UseCaseEvent,
)
from eebus_bridge.ski import is_valid_ski, normalize_ski

log = logging.getLogger("eebus_bridge.eebus")

SIDECAR_HOST = "localhost"  # spec/lpc.md handshake step 1
STARTUP_WAIT_S = 15.0  # how long a freshly started sidecar may take to accept connections
_ACTION_BUFFER = 1000
_EVENT_BUFFER = 1000
LOG_INTERVAL_S = 60.0  # rate limit of the "dropped" warnings (issue 13, item 2)
_ANSWERED_MEMORY_S = 30.0  # the sidecar rejects unanswered writes after 10 s

_DATA_EVENTS = frozenset(
    {
        "DataUpdateLimit",
        "DataUpdateFailsafeConsumptionActivePowerLimit",
        "DataUpdateFailsafeDurationMinimum",
    }
)
_KNOWN_EVENTS = _DATA_EVENTS | {
    "DataUpdateHeartbeat",
    "WriteApprovalRequired",
    "UseCaseSupportUpdate",
}


class HandshakeFailed(Exception):
    """The sidecar answered, but the handshake cannot complete (logged, then retried)."""


def set_config_request(config: Config) -> cs.SetConfigRequest:
    """Handshake step 2 (spec/lpc.md)."""
    return cs.SetConfigRequest(
        port=config.eebus.ship_port,
        vendor_code=config.device.vendor_code,
        device_brand=config.device.brand,
        device_model=config.device.model,
        serial_number=config.device.serial_number,
        device_categories=[cs.DeviceCategoryEnum.E_MOBILITY],
        device_type=cs.DeviceTypeEnum.CHARGING_STATION,
        entity_types=[cs.EntityTypeEnum.EVSE],
        heartbeat_timeout_seconds=config.eebus.heartbeat_timeout_s,
    )


async def set_config_when_ready(client: SidecarClient, config: Config) -> bool:
    """Handshake step 2, retried while a freshly started sidecar does not accept connections yet
    (up to STARTUP_WAIT_S). False: the sidecar is past its setup (NOT_IN_SETUP)."""
    request = set_config_request(config)
    delay = 0.05
    with trio.fail_after(STARTUP_WAIT_S + config.eebus.rpc_timeout_s):
        while True:
            try:
                await client.set_config(request)
                return True
            except SidecarUnreachable as exc:
                log.debug("sidecar not reachable yet: %s", exc)
            except SidecarRpcError as exc:
                if NOT_IN_SETUP in exc.message:
                    return False
                raise HandshakeFailed(f"SetConfig failed: {exc.message}") from exc
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)


class EebusLink:
    def __init__(self, config: Config, runner: LpcRunner, *, host: str = SIDECAR_HOST) -> None:
        self._config = config
        self._runner = runner
        self._host = host
        self._endpoint: str | None = None
        self._discovery_missing_logged = False
        # How long the event stream may stay silent before we ask the sidecar whether it is
        # still alive: a stopped (SIGSTOP) sidecar keeps its sockets open and says nothing.
        self.liveness_after_s = max(3 * config.eebus.rpc_timeout_s, 1.0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One connection; returns only by raising (or being cancelled)."""
        eebus = self._config.eebus
        async with SidecarClient(
            self._host, eebus.grpc_port, eebus.rpc_timeout_s, eebus.grpc_transport
        ) as client:
            actions_send, actions_receive = trio.open_memory_channel[SidecarAction](_ACTION_BUFFER)
            lanes = _EventLanes(self._runner, actions_send)
            discovery_send, discovery_receive = trio.open_memory_channel[DiscoveryEvent](
                _EVENT_BUFFER
            )
            try:
                # Attached before the streams start: events are handled from the moment they
                # arrive, and what they make the engine decide waits in the channel until the
                # handshake is done and _carry_out_actions runs.
                self._runner.attach_sidecar(actions_send)
                async with trio.open_nursery() as nursery:
                    fresh = await self._setup(client)
                    # Step 7: both subscriptions are on the wire before StartService.
                    for start in (
                        lambda ev: client.run_use_case_events(lanes, ev),
                        lambda ev: self._discovery_stream(client, discovery_send, ev),
                    ):
                        subscribed = trio.Event()
                        nursery.start_soon(start, subscribed)
                        with trio.fail_after(self._config.eebus.rpc_timeout_s):
                            await subscribed.wait()
                    # Step 8.
                    await self._start_service(client, fresh)
                    await client.start_heartbeat()
                    if fresh:
                        # Events may have been lost while we were away: re-read what the EG
                        # may have written, on the data lane, in order with live events. (A
                        # resumed sidecar was re-read in _resume, before the CS's view was
                        # written back.)
                        client.queue_rereads()
                    log.info(
                        "connected to the sidecar at %s:%d",
                        self._host,
                        self._config.eebus.grpc_port,
                    )
                    self._runner.activity.record(
                        "connection", event="up", endpoint=self._endpoint, fresh=fresh
                    )
                    task_status.started()
                    nursery.start_soon(self._carry_out_actions, client, actions_receive)
                    nursery.start_soon(self._handle_discovery, discovery_receive)
                    await self._watch_liveness(client, lanes)
            finally:
                self._runner.attach_sidecar(None)

    # -- handshake ---------------------------------------------------------------------------

    async def _setup(self, client: SidecarClient) -> bool:
        """Steps 2-6. Returns True for a fresh sidecar, False when resuming a configured one."""
        fresh = await self._set_config(client)
        if not fresh:
            await self._resume(client)
            return False
        try:
            await client.start_setup()
        except SidecarRpcError as exc:
            log.warning("StartSetup failed (continuing): %s", exc.message)
        for ski in sorted(self._config.eebus.ems_ski_allowlist):
            try:
                await client.register_remote_ski(ski)
            except SidecarRpcError as exc:
                log.warning("RegisterRemoteSki %s failed: %s", ski, exc.message)
        try:
            endpoint = await client.add_use_case()
        except SidecarRpcError as exc:
            raise HandshakeFailed(f"AddUseCase failed: {exc.message}") from exc
        if not endpoint:
            raise HandshakeFailed("AddUseCase returned an empty endpoint")
        await client.connect_lpc(endpoint)
        self._endpoint = endpoint
        await self._send_local_data(client)
        return True

    async def _set_config(self, client: SidecarClient) -> bool:
        """SetConfig, waiting for a sidecar that is still starting. False = already configured."""
        return await set_config_when_ready(client, self._config)

    async def _resume(self, client: SidecarClient) -> None:
        """The sidecar is past its setup: a reconnect within this process, or someone else's."""
        if self._config.sidecar.manage or self._endpoint is None:
            raise HandshakeFailed(
                f"the sidecar at {self._host}:{self._config.eebus.grpc_port} is already configured "
                f"({NOT_IN_SETUP}) and cannot be set up again: restart eebus_grpc_api"
                + ("" if self._config.sidecar.manage else " (or set [sidecar] manage = true)")
            )
        log.warning("sidecar already configured: resuming on its LPC endpoint %s", self._endpoint)
        await client.connect_lpc(self._endpoint)
        await self._resync(client)
        await self._send_local_data(client)

    async def _send_local_data(self, client: SidecarClient) -> None:
        """Step 6, with the engine's current view (also on UseCaseSupportUpdate)."""
        engine = self._runner.engine
        now = trio.current_time()
        await self._write_local_data(
            client,
            SendLocalData(
                nominal_max_W=self._config.lpc.max_nominal_power_W,
                limit=engine.current_sidecar_limit(now),
                failsafe=engine.failsafe_values,
            ),
        )

    async def _write_local_data(
        self, client: SidecarClient, data: SendLocalData, *, resend: bool = False
    ) -> None:
        """Step 6. A re-send on the same connection (UseCaseSupportUpdate) writes the limit as
        the engine sees it when it is written, not when the re-send was decided, and none while
        a write the engine approved is not read back yet: the sidecar then holds the energy
        guard's newer value, which the older view would overwrite (found by the soak)."""
        await client.set_consumption_nominal_max(data.nominal_max_W)
        limit = self._runner.engine.limit_to_resend(trio.current_time()) if resend else data.limit
        if limit is None:
            log.info("limit not re-sent: the energy guard's approved write is newer")
        else:
            await client.set_consumption_limit(limit)
        await client.set_failsafe_limit(data.failsafe.limit_W)
        await client.set_failsafe_duration(data.failsafe.duration_s)

    async def _start_service(self, client: SidecarClient, fresh: bool) -> None:
        try:
            await client.start_service()
        except SidecarRpcError as exc:
            if fresh or ALREADY_RUNNING not in exc.message:
                raise HandshakeFailed(f"StartService failed: {exc.message}") from exc

    async def _resync(self, client: SidecarClient) -> None:
        limit = await client.consumption_limit()
        failsafe_limit = await client.failsafe_limit()
        failsafe_duration = await client.failsafe_duration()
        # ski "" = source unknown (a re-read, not an event): the engine treats it as the active EG.
        await self._runner.send(LimitUpdated(ski="", limit=limit))
        await self._runner.send(FailsafeLimitUpdated(ski="", limit_W=failsafe_limit))
        await self._runner.send(FailsafeDurationUpdated(ski="", duration_s=failsafe_duration))

    # -- streams -----------------------------------------------------------------------------

    async def _discovery_stream(
        self,
        client: SidecarClient,
        out: trio.MemorySendChannel[DiscoveryEvent],
        subscribed: trio.Event,
    ) -> None:
        try:
            await client.stream_discovery_events(out, subscribed)
        except SidecarRpcError as exc:
            if exc.status != "UNIMPLEMENTED":
                raise
            # Sidecars up to v0.1.0 have no discovery (spec/wire.md): not a failure.
            if not self._discovery_missing_logged:
                log.warning("this sidecar has no SubscribeDiscoveryEvents (v0.1.0 or older)")
                self._discovery_missing_logged = True
            subscribed.set()

    async def _handle_discovery(self, events: trio.MemoryReceiveChannel[DiscoveryEvent]) -> None:
        async for event in events:
            log.info(
                "discovery: %s %s (%s %s, trusted=%s)",
                event.kind,
                event.ski or "<no SKI>",
                event.brand,
                event.model,
                event.is_trusted,
            )
            self._runner.activity.record(
                "discovery",
                event=event.kind,
                ski=event.ski,
                brand=event.brand,
                model=event.model,
                device_type=event.device_type,
                trusted=event.is_trusted,
            )
            if event.kind == "DISCOVERED":
                await self._runner.send(Discovered(ski=event.ski, is_trusted=event.is_trusted))
            elif event.kind == "REMOVED":
                await self._runner.send(Removed(ski=event.ski))

    async def _watch_liveness(self, client: SidecarClient, lanes: _EventLanes) -> None:
        """A stopped (SIGSTOP) sidecar keeps its sockets open and says nothing: after
        liveness_after_s without any event, ask whether it still answers (raises if not)."""
        while True:
            quiet_until = lanes.last_event_at + self.liveness_after_s
            if trio.current_time() < quiet_until:
                await trio.sleep_until(quiet_until)
                continue
            await client.is_heartbeat_within_duration()
            lanes.last_event_at = trio.current_time()

    # -- decisions of the lpc task -----------------------------------------------------------

    async def _carry_out_actions(
        self, client: SidecarClient, actions: trio.MemoryReceiveChannel[SidecarAction]
    ) -> None:
        async with trio.open_nursery() as nursery:
            async for action in actions:
                # Each in its own task: a slow write-back never delays an approval.
                nursery.start_soon(self._carry_out, client, action)

    async def _carry_out(self, client: SidecarClient, action: SidecarAction) -> None:
        try:
            if isinstance(action, Answer):
                await client.approve_or_deny(action.msg_counter, action.approve, action.reason)
            elif isinstance(action, WriteBackFailsafeLimit):
                log.warning("writing back failsafe limit %g W", action.limit_W)
                await client.set_failsafe_limit(action.limit_W)
            elif isinstance(action, WriteBackFailsafeDuration):
                log.warning("writing back failsafe duration %g s", action.duration_s)
                await client.set_failsafe_duration(action.duration_s)
            elif isinstance(action, RegisterSki):
                log.info("registering EG SKI %s", action.ski)
                await client.register_remote_ski(action.ski)
            else:
                await self._write_local_data(client, action, resend=True)
                await client.start_heartbeat()
        except SidecarRpcError as exc:
            log.warning("%s was refused by the sidecar: %s", type(action).__name__, exc)


class _RateLimitedLog:
    """One log line per key per interval; the next one says how many were not logged."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, suppressed since)

    def warning(self, key: str, message: str, *args: object) -> None:
        now = trio.current_time()
        logged_at, suppressed = self._last.get(key, (-math.inf, 0))
        if now - logged_at < self._interval_s:
            self._last[key] = (logged_at, suppressed + 1)
            return
        if len(self._last) > 1000:  # bounded memory under a flood of distinct SKIs
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self._interval_s}
        self._last[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} more like it not logged in the last %g s)"
            args = (*args, self._interval_s)
        log.warning(message, *args)


class _EventLanes:
    """The eebus task's side of the event lanes (sidecar_client.EventLanes): which lane an event
    takes, and handing its values to the engine. Synchronous; runs on the Trio thread."""

    def __init__(self, runner: LpcRunner, actions: trio.MemorySendChannel[SidecarAction]) -> None:
        self._runner = runner
        self._actions = actions
        self._dropped = _RateLimitedLog(LOG_INTERVAL_S)
        self._answered: dict[tuple[str, int], float] = {}  # (SKI, msg counter) -> when
        self.last_event_at = trio.current_time()

    def route(self, event: UseCaseEvent) -> EventRoute:
        self.last_event_at = now = trio.current_time()
        name, ski = event.name, event.ski
        if name not in _KNOWN_EVENTS:
            log.warning("ignored unknown event %r from %s", name, ski or "<no SKI>")
            return EventRoute.DROP
        if not is_valid_ski(ski):
            self._dropped.warning(
                "malformed",
                "dropped malformed event %s: SKI %r is not 40 hex digits",
                name,
                ski,
            )
            return EventRoute.DROP
        if name == "WriteApprovalRequired":
            return EventRoute.APPROVAL
        if name == "UseCaseSupportUpdate":
            return EventRoute.APPLY
        engine = self._runner.engine
        if engine.refuses_data_from(ski, now):
            source = normalize_ski(ski)
            self._dropped.warning(
                source,
                "dropped %s from %s: %s is the active energy guard (logged once a minute per EG)",
                name,
                source,
                engine.status(now).active_ski,
            )
            if name == "DataUpdateFailsafeConsumptionActivePowerLimit":
                self._act(WriteBackFailsafeLimit(engine.failsafe_values.limit_W))
            elif name == "DataUpdateFailsafeDurationMinimum":
                self._act(WriteBackFailsafeDuration(engine.failsafe_values.duration_s))
            return EventRoute.DROP
        return EventRoute.DATA if name in _DATA_EVENTS else EventRoute.APPLY

    def apply(self, event: UseCaseEvent, value: EventValue, received_at: float) -> None:
        name, ski = event.name, event.ski
        if name == "DataUpdateHeartbeat":
            self._runner.apply(Heartbeat(ski=ski), received_at)
        elif name == "UseCaseSupportUpdate":
            self._runner.apply(UseCaseSupportUpdate(ski=ski), received_at)
        elif isinstance(value, SidecarLimit):
            self._runner.apply(LimitUpdated(ski=ski, limit=value), received_at)
        elif isinstance(value, float) and name == "DataUpdateFailsafeConsumptionActivePowerLimit":
            self._runner.apply(FailsafeLimitUpdated(ski=ski, limit_W=value), received_at)
        elif isinstance(value, float):
            self._runner.apply(FailsafeDurationUpdated(ski=ski, duration_s=value), received_at)

    def needs_heartbeat_check(self) -> bool:
        return self._runner.engine.needs_sidecar_heartbeat_check(trio.current_time())

    def decide(
        self, event: UseCaseEvent, pending: PendingWrites, heartbeat_within: bool | None
    ) -> list[Answer]:
        """Each pending write is decided once, by the engine; a write still pending when the
        next WriteApprovalRequired's read comes (its answer in flight) is not decided again."""
        now = trio.current_time()
        if len(self._answered) > 1000:
            self._answered = {
                k: t for k, t in self._answered.items() if now - t < _ANSWERED_MEMORY_S
            }
        ski = normalize_ski(event.ski)
        new = tuple(
            (counter, limit) for counter, limit in pending if (ski, counter) not in self._answered
        )
        if not new:
            log.debug("WriteApprovalRequired from %s: nothing new is pending", ski)
            return []
        for counter, _ in new:
            self._answered[(ski, counter)] = now
        return self._runner.apply(
            WriteApprovalRequired(ski=ski, pending=new, sidecar_heartbeat_within=heartbeat_within)
        )

    def answers_sent(self) -> None:
        self._runner.answers_sent()

    def rpc_refused(self, event: UseCaseEvent, error: SidecarRpcError) -> None:
        # The sidecar is alive but could not give the value or take the answer: keep going.
        log.warning("event %s from %s: %s", event.name, event.ski or "<no SKI>", error)

    def _act(self, action: SidecarAction) -> None:
        try:
            self._actions.send_nowait(action)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("sidecar connection not accepting actions: dropped %r", action)
