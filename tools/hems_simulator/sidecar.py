"""The simulated `eebus_grpc_api`: lifecycle, local device, use cases, LPC data, events.

Plain state and synchronous rules, no gRPC: the servers module turns these methods into RPCs
(mapping SidecarError to status UNKNOWN with the real sidecar's texts) and the energy guard
module drives the EG-facing methods. Behaviour follows spec/wire.md ("How the real sidecar
behaves") and the Go sources it was read from.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from eebus_bridge.generated.common_types import EntityAddress, LoadLimit
from eebus_bridge.generated.control_service import (
    AddEntityRequest,
    AddUseCaseRequest,
    DiscoveryEvent,
    DiscoveryEventType,
    EntityTypeEnum,
    RemoveEntityRequest,
    SetConfigRequest,
    SubscribeUseCaseEventsRequest,
    SubscribeUseCaseEventsResponse,
    UseCase,
    UseCaseActorTypeEnum,
    UseCaseEvent,
    UseCaseNameTypeEnum,
)
from eebus_bridge.ski import normalize_ski

from .channels import BoundedBuffer, RendezvousQueue
from .logs import SimLog
from .records import RecordBook
from .scenario import EgSpec

NS_PER_S = 1_000_000_000
FAILSAFE_DURATION_MIN_NS = 2 * 3600 * NS_PER_S
FAILSAFE_DURATION_MAX_NS = 24 * 3600 * NS_PER_S
DISCOVERY_BUFFER = 32
AUTO_REJECT_REASON = "write not approved in time by application"
GO_NIL_DEREFERENCE = "runtime error: invalid memory address or nil pointer dereference"

# Event names as the sidecar sends them (eebus-go's "cs-lpc-" prefix stripped).
USE_CASE_SUPPORT_UPDATE = "UseCaseSupportUpdate"
WRITE_APPROVAL_REQUIRED = "WriteApprovalRequired"
DATA_UPDATE_LIMIT = "DataUpdateLimit"
DATA_UPDATE_FAILSAFE_LIMIT = "DataUpdateFailsafeConsumptionActivePowerLimit"
DATA_UPDATE_FAILSAFE_DURATION = "DataUpdateFailsafeDurationMinimum"
DATA_UPDATE_HEARTBEAT = "DataUpdateHeartbeat"

_CS = UseCaseActorTypeEnum.ControllableSystem
_EG = UseCaseActorTypeEnum.EnergyGuard
_LPC = UseCaseNameTypeEnum.limitationOfPowerConsumption

# AddUseCase of the Go control service: which (role, use case) pairs exist but answer
# "Not implemented"; other names of a known role answer "Unknown use case '<name>' for role X".
_NOT_IMPLEMENTED: dict[UseCaseActorTypeEnum, frozenset[str]] = {
    UseCaseActorTypeEnum.CEM: frozenset(
        {
            "coordinatedEvCharging",
            "evCommissioningAndConfiguration",
            "measurementOfElectricityDuringEvCharging",
            "evseCommissioningAndConfiguration",
            "evStateOfCharge",
            "overloadProtectionByEvChargingCurrentCurtailment",
            "optimizationOfSelfConsumptionDuringEvCharging",
            "visualizationOfAggregatedBatteryData",
            "visualizationOfAggregatedPhotovoltaicData",
        }
    ),
    _CS: frozenset({"limitationOfPowerProduction"}),
    _EG: frozenset({"limitationOfPowerProduction"}),
    UseCaseActorTypeEnum.MonitoringAppliance: frozenset(
        {"monitoringOfGridConnectionPoint", "monitoringOfPowerConsumption"}
    ),
}
_ROLE_TAGS = {
    UseCaseActorTypeEnum.CEM: "CEM",
    _CS: "CS",
    _EG: "EG",
    UseCaseActorTypeEnum.MonitoringAppliance: "MA",
}


class Lifecycle(enum.Enum):
    SETUP = "Setup"
    READY = "Ready"
    RUNNING = "Running"
    STOPPED = "Stopped"


class SidecarError(Exception):
    """An RPC error; the client gets gRPC status UNKNOWN with exactly this text."""


class SimulatorError(Exception):
    """An EG action or control command that cannot be done now (e.g. the EG is not connected)."""


class SimulatorCrashed(Exception):
    """Raised when leaving open_hems_simulator() after the simulated sidecar crashed
    (unless allow_crash=True): a crash is always a client bug worth failing a test for."""


class SidecarCrash(Exception):
    """Where the real process dies (a Go nil dereference); the message is the panic text."""


def enum_name(value: enum.Enum) -> str:
    """Go's String() of a proto enum: the name, or the number for values it does not know."""
    name = value.name
    return str(value.value) if name is None or name.startswith("~") else name


def _round_to_second_ns(seconds: float) -> int:
    return math.floor(seconds + 0.5) * NS_PER_S


@attrs.define
class LimitState:
    value: float = 0.0
    is_changeable: bool = True
    is_active: bool = False
    duration_ns: int = 0  # as set; 0 = no end
    set_at: float = 0.0  # simulator clock when it was set (the countdown starts there)


@attrs.frozen
class PendingWrite:
    msg_counter: int
    remote_ski: str
    remote_entity: tuple[int, ...]
    value: float
    is_active: bool
    duration_ns: int
    created_at: float

    def as_load_limit(self) -> LoadLimit:
        # Pending entries carry no changeable flag upstream: it reads false.
        return LoadLimit(
            duration_nanoseconds=self.duration_ns,
            is_changeable=False,
            is_active=self.is_active,
            value=self.value,
        )

    def limit_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "is_active": self.is_active,
            "duration_nanoseconds": self.duration_ns,
        }


@attrs.define
class LpcData:
    """What the sidecar's LPC use case holds, with the values right after AddUseCase."""

    limit: LimitState = attrs.Factory(LimitState)
    failsafe_limit: float = 0.0
    failsafe_limit_changeable: bool = True
    failsafe_duration_ns: int = 0
    failsafe_duration_changeable: bool = True
    nominal_max: float | None = None  # None: "data not available"
    pending: dict[int, PendingWrite] = attrs.Factory(dict)


@attrs.define(eq=False)
class UseCaseEntry:
    entity_address: tuple[int, ...]
    actor: UseCaseActorTypeEnum
    name: UseCaseNameTypeEnum
    lpc: LpcData | None = None  # only for ControllableSystem + LPC
    events: RendezvousQueue[SubscribeUseCaseEventsResponse] | None = None
    port: int | None = None

    @property
    def is_cs_lpc(self) -> bool:
        return self.actor == _CS and self.name == _LPC


@attrs.frozen
class RemoteService:
    """An EG as mDNS shows it (what DiscoveryEvent carries, apart from type and trust)."""

    ski: str
    ship_identifier: str
    brand: str
    model: str
    device_type: str
    serial: str


def remote_service(spec: EgSpec, ski: str) -> RemoteService:
    """What mDNS shows of the EG `spec` describes (ski: its current SKI)."""
    return RemoteService(
        ski=ski,
        ship_identifier=spec.identifier,
        brand=spec.brand,
        model=spec.model,
        device_type=spec.device_type,
        serial=spec.serial,
    )


@attrs.frozen
class LocalConfig:
    port: int
    vendor_code: str
    brand: str
    model: str
    serial_number: str
    heartbeat_timeout_s: int
    entity_types: tuple[EntityTypeEnum, ...]


class SimulatedSidecar:
    """State of one simulated sidecar process."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        log: SimLog,
        records: RecordBook,
        schedule: Callable[[float, Callable[[], None]], None],
        approval_timeout_s: float = 10.0,
        heartbeat_window_s: float = 120.0,
        strict_config: bool = True,
        lose_event_on_stream_break: bool = True,
        local_ski: str | None = None,
        local_ski_problem: str = "",
    ) -> None:
        self._clock = clock
        self.local_ski = local_ski  # of the certificate loaded at start-up
        self._local_ski_problem = local_ski_problem
        self._log = log
        self._records = records
        self._schedule = schedule
        self.approval_timeout_s = approval_timeout_s
        self.heartbeat_window_s = heartbeat_window_s
        self.strict_config = strict_config
        self.lose_event_on_stream_break = lose_event_on_stream_break

        self.state = Lifecycle.SETUP
        self.running = trio.Event()  # set by StartService
        self.config: LocalConfig | None = None
        self.entities: dict[tuple[int, ...], EntityTypeEnum] = {}
        self.use_cases: list[UseCaseEntry] = []
        self.trusted_skis: set[str] = set()
        self.local_heartbeat_on = False
        self.last_eg_heartbeat: float | None = None  # EG timestamp, in our clock's terms
        self.visible: dict[str, RemoteService] = {}
        self._discovery_subscribers: list[BoundedBuffer[DiscoveryEvent]] = []
        self.on_trusted: Callable[[str], None] = lambda ski: None
        self.on_local_heartbeat_changed: Callable[[], None] = lambda: None
        self._event_messages: dict[tuple[str, str, tuple[int, ...]], Any] = {}  # see _emit
        self.on_stopped: Callable[[], None] = lambda: None
        self.on_subscribers_changed: Callable[[], None] = lambda: None
        self.on_approval: Callable[[PendingWrite, bool, str], None] = lambda w, a, r: None

    # ---------------------------------------------------------------- control service

    def set_config(self, request: SetConfigRequest) -> None:
        self._log.debug("Received set config command")
        if self.state is not Lifecycle.SETUP:
            self._log.error("Service is not in setup state")
            raise SidecarError("Service is not in setup state")
        missing = self._missing_config_field(request)
        if missing is not None:
            text = f"Failed to create configuration: {missing} is required"
            self._log.error(text)
            raise SidecarError(text)
        self.config = LocalConfig(
            port=request.port or 4711,
            vendor_code=request.vendor_code,
            brand=request.device_brand,
            model=request.device_model,
            serial_number=request.serial_number,
            heartbeat_timeout_s=request.heartbeat_timeout_seconds,
            entity_types=tuple(request.entity_types),
        )
        self._log.debug("Successfully set configuration")

    def _missing_config_field(self, request: SetConfigRequest) -> str | None:
        # Order and names of eebus-go's api.NewConfiguration checks.
        checks: list[tuple[str, bool]] = [
            ("vendorCode", bool(request.vendor_code)),
            ("brand", bool(request.device_brand)),
            ("model", bool(request.device_model)),
            ("serialNumber", bool(request.serial_number)),
            ("deviceCategories", bool(request.device_categories)),
        ]
        if self.strict_config:
            # Upstream only checks the string of the enum (never empty): UNKNOWN passes, port 0
            # becomes 4711 and a 0 s heartbeat timeout breaks the heartbeat later. Strict mode
            # treats all of them as missing, as spec/wire.md asks ("every field is required").
            checks += [
                ("deviceType", request.device_type.value != 0),
                ("entityTypes", bool(request.entity_types)),
                ("port", request.port != 0),
                ("heartbeatTimeout", request.heartbeat_timeout_seconds != 0),
            ]
        else:
            checks.append(("entityTypes", bool(request.entity_types)))
        for name, present in checks:
            if not present:
                return name
        return None

    def start_setup(self) -> None:
        self._log.debug("Received start setup command")
        if self.state is not Lifecycle.SETUP:
            raise SidecarError("Service is not in setup state")
        if self.config is None:
            # The embedded eebus-go service has no configuration: Setup dereferences nil.
            raise SidecarCrash(GO_NIL_DEREFERENCE)
        self.entities = {(0,): EntityTypeEnum.DeviceInformation}
        for index, entity_type in enumerate(self.config.entity_types, start=1):
            self.entities[(index,)] = entity_type
        self.state = Lifecycle.READY
        # The real sidecar reports its SKI once its eebus-go service exists (pairing issue).
        if self.local_ski is not None:
            self._log.info(f"Local SKI: {self.local_ski}")
        elif self._local_ski_problem:
            self._log.error(f"Local SKI unavailable: {self._local_ski_problem}")

    def start_service(self) -> None:
        self._log.debug("Received start command")
        if self.state is Lifecycle.RUNNING:
            raise SidecarError("Service is already running")
        if self.state is not Lifecycle.READY:
            raise SidecarError("Service is not ready")
        self.state = Lifecycle.RUNNING
        self._log.info("Service started")
        self.running.set()
        self.on_local_heartbeat_changed()

    def stop_service(self) -> None:
        self._log.debug("Received stop command")
        if self.state is not Lifecycle.RUNNING:
            raise SidecarError("Service is not running")
        self.state = Lifecycle.STOPPED
        self._log.info("Service stopped")
        self.on_stopped()
        self.on_local_heartbeat_changed()

    def add_entity(self, request: AddEntityRequest) -> None:
        self._log.debug("Received add entity command")
        if self.state is Lifecycle.SETUP:
            raise SidecarError("Service is not in ready state")
        address = _address(request.address)
        if address in self.entities:
            raise SidecarError("Entity address already used")
        self.entities[address] = request.type

    def remove_entity(self, request: RemoveEntityRequest) -> None:
        self._log.debug("Received remove entity command")
        if self.state is Lifecycle.SETUP:
            raise SidecarError("Service is not in ready state")
        address = _address(request.address)
        if address not in self.entities:
            raise SidecarError("Entity not found")
        del self.entities[address]

    def register_remote_ski(self, raw_ski: str) -> None:
        self._log.debug("Received register remote SKI command")
        if self.state not in (Lifecycle.READY, Lifecycle.RUNNING):
            raise SidecarError("Service must be in ready or running state")
        ski = normalize_ski(raw_ski)
        if ski not in self.trusted_skis:
            self.trusted_skis.add(ski)
            self._log.info(f"Registered remote SKI {ski}")
            self.on_trusted(ski)

    def add_use_case(self, request: AddUseCaseRequest) -> UseCaseEntry:
        """Registers the use case; the caller starts its server and sets entry.port."""
        self._log.debug("Received add use case command")
        address = _address(request.entity_address)
        if self.state is Lifecycle.SETUP or address not in self.entities:
            # No local device yet, or no such entity: upstream calls a method on nil.
            raise SidecarCrash(GO_NIL_DEREFERENCE)
        use_case = request.use_case or UseCase()
        actor, name = use_case.actor, use_case.name
        for entry in self.use_cases:
            if entry.entity_address == address and (entry.actor, entry.name) == (actor, name):
                raise SidecarError("Use case already supported")
        if actor not in _ROLE_TAGS:
            raise SidecarError(f"Unknown role '{enum_name(actor)}'")
        if (actor, name) not in ((_CS, _LPC), (_EG, _LPC)):
            if enum_name(name) in _NOT_IMPLEMENTED[actor]:
                raise SidecarError("Not implemented")
            raise SidecarError(f"Unknown use case '{enum_name(name)}' for role {_ROLE_TAGS[actor]}")
        entry = UseCaseEntry(entity_address=address, actor=actor, name=name)
        if entry.is_cs_lpc:
            entry.lpc = LpcData()
            entry.events = RendezvousQueue(
                self.event_lost,
                lose_after_break=self.lose_event_on_stream_break,
                on_change=lambda: self.on_subscribers_changed(),
            )
        self.use_cases.append(entry)
        return entry

    def find_use_case(self, request: SubscribeUseCaseEventsRequest) -> UseCaseEntry:
        address = _address(request.entity_address)
        use_case = request.use_case or UseCase()
        for entry in self.use_cases:
            if entry.entity_address == address and (entry.actor, entry.name) == (
                use_case.actor,
                use_case.name,
            ):
                return entry
        raise SidecarError("Use case not found")

    @property
    def cs_lpc(self) -> UseCaseEntry | None:
        """The ControllableSystem LPC use case the EG talks to (the first one added)."""
        return next((entry for entry in self.use_cases if entry.is_cs_lpc), None)

    # ---------------------------------------------------------------- discovery

    def subscribe_discovery(
        self,
    ) -> tuple[list[DiscoveryEvent], BoundedBuffer[DiscoveryEvent]]:
        if self.state not in (Lifecycle.READY, Lifecycle.RUNNING):
            raise SidecarError("Service must be in ready or running state")
        buffer: BoundedBuffer[DiscoveryEvent] = BoundedBuffer(
            DISCOVERY_BUFFER, self._discovery_dropped
        )
        self._discovery_subscribers.append(buffer)
        snapshot = [
            self._discovery_event(DiscoveryEventType.DISCOVERED, service)
            for service in self.visible.values()
        ]
        return snapshot, buffer

    def unsubscribe_discovery(self, buffer: BoundedBuffer[DiscoveryEvent]) -> None:
        if buffer in self._discovery_subscribers:
            self._discovery_subscribers.remove(buffer)

    def _discovery_event(
        self, event_type: DiscoveryEventType, service: RemoteService
    ) -> DiscoveryEvent:
        return DiscoveryEvent(
            type=event_type,
            remote_ski=service.ski,
            ship_identifier=service.ship_identifier,
            brand=service.brand,
            model=service.model,
            device_type=service.device_type,
            serial=service.serial,
            is_trusted=service.ski in self.trusted_skis,
        )

    def _publish_discovery(self, event: DiscoveryEvent) -> None:
        self._records.add_event("discovery", enum_name(event.type), event.remote_ski)
        for buffer in list(self._discovery_subscribers):
            buffer.offer(event)

    def _discovery_dropped(self, event: DiscoveryEvent) -> None:
        self._log.info(
            "DiscoveryEvent subscriber channel full; dropping event for SKI "
            f"{event.remote_ski} (type {enum_name(event.type)})"
        )
        self._records.add_event("discovery", enum_name(event.type), event.remote_ski, "dropped")

    # ---------------------------------------------------------------- use-case events

    def _emit(self, name: str, ski: str, entity: tuple[int, ...]) -> None:
        entry = self.cs_lpc
        if entry is None or entry.events is None:
            return
        # One message object per (event, SKI, entity), never changed: the servers encode each
        # object once (servers.EncodedOnceCodec).
        event = self._event_messages.get((name, ski, entity))
        if event is None:
            if len(self._event_messages) >= 256:
                self._event_messages.clear()
            event = self._event_messages[(name, ski, entity)] = SubscribeUseCaseEventsResponse(
                remote_ski=ski,
                remote_entity_address=EntityAddress(entity_address=list(entity)),
                use_case_event=UseCaseEvent(use_case=UseCase(actor=_CS, name=_LPC), event=name),
            )
        self._records.add_event("usecase", name, ski)
        self._log.debug(f"cs-lpc event {name} from {ski}")
        entry.events.put(event)

    def event_lost(self, event: SubscribeUseCaseEventsResponse) -> None:
        name = event.use_case_event.event if event.use_case_event else ""
        self._log.debug(f"Failed to send event: {name} lost on a broken stream")
        self._records.add_event("usecase", name, event.remote_ski, "lost")

    # ---------------------------------------------------------------- cs_lpc service

    def consumption_limit(self, lpc: LpcData) -> LoadLimit:
        limit = lpc.limit
        duration_ns = 0
        if limit.duration_ns > 0:
            remaining = limit.duration_ns / NS_PER_S - (self._clock() - limit.set_at)
            duration_ns = _round_to_second_ns(remaining)
        return LoadLimit(
            duration_nanoseconds=duration_ns,
            is_changeable=limit.is_changeable,
            is_active=limit.is_active,
            value=limit.value,
        )

    def set_consumption_limit(self, lpc: LpcData, limit: LoadLimit) -> None:
        lpc.limit = LimitState(
            value=limit.value,
            is_changeable=limit.is_changeable,
            is_active=limit.is_active,
            duration_ns=max(limit.duration_nanoseconds, 0),
            set_at=self._clock(),
        )

    def pending_limits(self, lpc: LpcData) -> dict[int, LoadLimit]:
        return {counter: write.as_load_limit() for counter, write in lpc.pending.items()}

    def approve_or_deny(self, lpc: LpcData, msg_counter: int, approve: bool, reason: str) -> None:
        write = lpc.pending.pop(msg_counter, None)
        if write is None:
            return  # upstream: "a caller error", silently ignored
        self._answer(lpc, write, approve, reason, auto_rejected=False)

    def _answer(
        self, lpc: LpcData, write: PendingWrite, approve: bool, reason: str, *, auto_rejected: bool
    ) -> None:
        self._records.add_approval(
            msg_counter=write.msg_counter,
            approve=approve,
            reason=reason,
            auto_rejected=auto_rejected,
            remote_ski=write.remote_ski,
            limit=write.limit_dict(),
        )
        verdict = "approved" if approve else f"denied ({reason})"
        # DEBUG, like every per-write line: at the benchmark's INFO the simulator's own cost per
        # write stays out of the bridge's measured path.
        self._log.debug(f"Limit write {write.msg_counter} from {write.remote_ski} {verdict}")
        self.on_approval(write, approve, reason)
        if approve:
            lpc.limit = LimitState(
                value=write.value,
                is_changeable=lpc.limit.is_changeable,
                is_active=write.is_active,
                duration_ns=write.duration_ns,
                set_at=self._clock(),
            )
            self._emit(DATA_UPDATE_LIMIT, write.remote_ski, write.remote_entity)

    def _expire_write(self, lpc: LpcData, msg_counter: int) -> None:
        write = lpc.pending.pop(msg_counter, None)
        if write is not None:
            self._answer(lpc, write, False, AUTO_REJECT_REASON, auto_rejected=True)

    def set_failsafe_limit(self, lpc: LpcData, value: float, changeable: bool) -> None:
        lpc.failsafe_limit = value
        lpc.failsafe_limit_changeable = changeable

    def set_failsafe_duration(self, lpc: LpcData, duration_ns: int, changeable: bool) -> None:
        if not FAILSAFE_DURATION_MIN_NS <= duration_ns <= FAILSAFE_DURATION_MAX_NS:
            raise SidecarError("duration outside of allowed range")
        lpc.failsafe_duration_ns = duration_ns
        lpc.failsafe_duration_changeable = changeable

    def nominal_max(self, lpc: LpcData) -> float:
        if lpc.nominal_max is None:
            raise SidecarError("data not available")
        return lpc.nominal_max

    def set_nominal_max(self, lpc: LpcData, value: float) -> None:
        lpc.nominal_max = value

    def start_heartbeat(self) -> None:
        self.local_heartbeat_on = True
        self.on_local_heartbeat_changed()

    def stop_heartbeat(self) -> None:
        self.local_heartbeat_on = False
        self.on_local_heartbeat_changed()

    @property
    def local_heartbeat_period_s(self) -> float | None:
        """Our heartbeat goes out every (timeout - 2 s) while started and running."""
        if not self.local_heartbeat_on or self.state is not Lifecycle.RUNNING:
            return None
        if self.config is None:
            return None
        return max(self.config.heartbeat_timeout_s - 2.0, 1.0)

    def is_heartbeat_within_duration(self) -> bool:
        if self.last_eg_heartbeat is None:
            return False
        return abs(self._clock() - self.last_eg_heartbeat) < self.heartbeat_window_s

    # ---------------------------------------------------------------- EG side

    def eg_visible(self, service: RemoteService) -> None:
        if service.ski in self.visible:
            return
        self.visible[service.ski] = service
        self._publish_discovery(self._discovery_event(DiscoveryEventType.DISCOVERED, service))

    def eg_gone(self, ski: str) -> None:
        service = self.visible.pop(ski, None)
        if service is not None:
            self._publish_discovery(self._discovery_event(DiscoveryEventType.REMOVED, service))

    def eg_connected(self, ski: str, entity: tuple[int, ...], skew_s: float) -> None:
        """The EG's SHIP/SPINE connection is up: the sidecar reads its heartbeat once
        (no event) and sees its LPC support (UseCaseSupportUpdate)."""
        self.last_eg_heartbeat = self._clock() + skew_s
        self._log.info(f"Remote SKI {ski} connected")
        self._emit(USE_CASE_SUPPORT_UPDATE, ski, entity)

    def eg_disconnected(self, ski: str) -> None:
        self._log.info(f"Remote SKI {ski} disconnected")

    def eg_heartbeat(self, ski: str, entity: tuple[int, ...], skew_s: float) -> None:
        self.last_eg_heartbeat = self._clock() + skew_s
        self._emit(DATA_UPDATE_HEARTBEAT, ski, entity)

    def eg_write_limit(
        self,
        *,
        ski: str,
        entity: tuple[int, ...],
        msg_counter: int,
        value: float,
        is_active: bool,
        duration_ns: int,
    ) -> None:
        entry = self.cs_lpc
        if entry is None or entry.lpc is None:
            raise SimulatorError("the CS has not added the LPC use case")
        lpc = entry.lpc
        if msg_counter in lpc.pending:
            return
        lpc.pending[msg_counter] = PendingWrite(
            msg_counter=msg_counter,
            remote_ski=ski,
            remote_entity=entity,
            value=value,
            is_active=is_active,
            duration_ns=duration_ns,
            created_at=self._clock(),
        )
        self._log.debug(
            f"Limit write {msg_counter} from {ski}: {value} W, active={is_active}, "
            f"duration={duration_ns / NS_PER_S:g} s (waiting for approval)"
        )
        self._emit(WRITE_APPROVAL_REQUIRED, ski, entity)
        self._schedule(self.approval_timeout_s, lambda: self._expire_write(lpc, msg_counter))

    def eg_write_failsafe_limit(self, ski: str, entity: tuple[int, ...], value: float) -> None:
        lpc = self._require_lpc()
        lpc.failsafe_limit = value  # EG writes are not range-checked upstream
        self._log.info(f"Failsafe limit written by {ski}: {value} W")
        self._emit(DATA_UPDATE_FAILSAFE_LIMIT, ski, entity)

    def eg_write_failsafe_duration(
        self, ski: str, entity: tuple[int, ...], duration_ns: int
    ) -> None:
        lpc = self._require_lpc()
        lpc.failsafe_duration_ns = duration_ns  # not range-checked either
        self._log.info(f"Failsafe duration written by {ski}: {duration_ns / NS_PER_S:g} s")
        self._emit(DATA_UPDATE_FAILSAFE_DURATION, ski, entity)

    def _require_lpc(self) -> LpcData:
        entry = self.cs_lpc
        if entry is None or entry.lpc is None:
            raise SimulatorError("the CS has not added the LPC use case")
        return entry.lpc


def _address(address: EntityAddress | None) -> tuple[int, ...]:
    return tuple(address.entity_address) if address is not None else ()
