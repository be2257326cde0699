"""The eebus task: one gRPC connection to the sidecar, from handshake to failure.

`EebusLink.run()` connects, performs the handshake of spec/lpc.md in its exact order, then reads
the use-case event and discovery streams, turns each event (plus the values read for it) into an
engine input, and carries out the sidecar actions the lpc task decides. Any sign of a dead or hung
sidecar raises, which fails the supervised group; the next run starts from the handshake again.
The link object itself outlives runs only to remember the cs_lpc endpoint (see `_resume`).
"""

from __future__ import annotations

import logging

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
    SidecarClient,
    SidecarRpcError,
    SidecarUnreachable,
    UseCaseEvent,
)

log = logging.getLogger("eebus_bridge.eebus")

SIDECAR_HOST = "localhost"  # spec/lpc.md handshake step 1
STARTUP_WAIT_S = 15.0  # how long a freshly started sidecar may take to accept connections
_ACTION_BUFFER = 1000
_EVENT_BUFFER = 1000


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
        async with SidecarClient(
            self._host, self._config.eebus.grpc_port, self._config.eebus.rpc_timeout_s
        ) as client:
            actions_send, actions_receive = trio.open_memory_channel[SidecarAction](_ACTION_BUFFER)
            events_send, events_receive = trio.open_memory_channel[UseCaseEvent](_EVENT_BUFFER)
            discovery_send, discovery_receive = trio.open_memory_channel[DiscoveryEvent](
                _EVENT_BUFFER
            )
            try:
                async with trio.open_nursery() as nursery:
                    fresh = await self._setup(client)
                    # Step 7: both subscriptions are on the wire before StartService.
                    for start in (
                        lambda ev: client.stream_use_case_events(events_send, ev),
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
                        # may have written. (A resumed sidecar was re-read in _resume, before
                        # the CS's view was written back.)
                        await self._resync(client)
                    self._runner.attach_sidecar(actions_send)
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
                    await self._handle_events(client, events_receive, nursery)
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

    @staticmethod
    async def _write_local_data(client: SidecarClient, data: SendLocalData) -> None:
        await client.set_consumption_nominal_max(data.nominal_max_W)
        await client.set_consumption_limit(data.limit)
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

    async def _handle_events(
        self,
        client: SidecarClient,
        events: trio.MemoryReceiveChannel[UseCaseEvent],
        nursery: trio.Nursery,
    ) -> None:
        while True:
            # One scope per quiet period, pushed back by every event (cheaper than a scope per
            # event when thousands arrive per second).
            with trio.move_on_after(self.liveness_after_s) as quiet:
                async for event in events:
                    await self._handle_event(client, event, nursery)
                    quiet.deadline = trio.current_time() + self.liveness_after_s
            # Silence: make sure the sidecar still answers (raises SidecarUnreachable if not).
            await client.is_heartbeat_within_duration()

    async def _handle_event(
        self, client: SidecarClient, event: UseCaseEvent, nursery: trio.Nursery
    ) -> None:
        try:
            await self._dispatch_event(client, event, nursery)
        except SidecarRpcError as exc:
            # The sidecar is alive but could not give the value: log it, keep going.
            log.warning("event %s from %s: %s", event.name, event.ski or "<no SKI>", exc)

    async def _dispatch_event(
        self, client: SidecarClient, event: UseCaseEvent, nursery: trio.Nursery
    ) -> None:
        name, ski = event.name, event.ski
        log.debug("event %s from %s", name, ski or "<no SKI>")
        if name == "DataUpdateHeartbeat":
            await self._runner.send(Heartbeat(ski=ski))
        elif name == "WriteApprovalRequired":
            # Answered concurrently: the sidecar rejects writes not answered within 10 s.
            nursery.start_soon(self._approval, client, ski)
        elif name == "DataUpdateLimit":
            await self._runner.send(LimitUpdated(ski=ski, limit=await client.consumption_limit()))
        elif name == "DataUpdateFailsafeConsumptionActivePowerLimit":
            value = await client.failsafe_limit()
            await self._runner.send(FailsafeLimitUpdated(ski=ski, limit_W=value))
        elif name == "DataUpdateFailsafeDurationMinimum":
            duration = await client.failsafe_duration()
            await self._runner.send(FailsafeDurationUpdated(ski=ski, duration_s=duration))
        elif name == "UseCaseSupportUpdate":
            await self._runner.send(UseCaseSupportUpdate(ski=ski))
        else:
            log.warning("ignored unknown event %r from %s", name, ski or "<no SKI>")

    async def _approval(self, client: SidecarClient, ski: str) -> None:
        try:
            await self._ask_approval(client, ski)
        except SidecarRpcError as exc:
            log.warning("WriteApprovalRequired from %s: %s", ski or "<no SKI>", exc)

    async def _ask_approval(self, client: SidecarClient, ski: str) -> None:
        pending: list[tuple[int, SidecarLimit]] = await client.pending_consumption_limits()
        if not pending:
            log.info("WriteApprovalRequired from %s, but nothing is pending", ski or "<no SKI>")
            return
        heartbeat_within: bool | None = None
        if self._runner.engine.needs_sidecar_heartbeat_check(trio.current_time()):
            heartbeat_within = await client.is_heartbeat_within_duration()
        await self._runner.send(
            WriteApprovalRequired(
                ski=ski, pending=tuple(pending), sidecar_heartbeat_within=heartbeat_within
            )
        )

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
                await self._write_local_data(client, action)
                await client.start_heartbeat()
        except SidecarRpcError as exc:
            log.warning("%s was refused by the sidecar: %s", type(action).__name__, exc)
