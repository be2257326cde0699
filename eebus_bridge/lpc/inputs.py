"""What the runtime feeds the LPC engine: one frozen object per sidecar event or timer.

SKIs arrive raw from the sidecar; the engine normalises them. For LimitUpdated,
WriteApprovalRequired and the failsafe-value inputs an empty SKI means "source unknown" (a
re-read after a reconnect): the engine treats it as the active energy guard without letting it
claim that role. Other inputs with an invalid or empty SKI are ignored with a Note.
"""

from __future__ import annotations

import attrs

from eebus_bridge.lpc.values import FailsafeValues, SidecarLimit


@attrs.frozen
class Start:
    """The first input, exactly once per process; persisted = the failsafe values stored by an
    earlier run (None when there is no store), restored after validation [LPC-TS-044]."""

    persisted: FailsafeValues | None = None


@attrs.frozen
class UseCaseSupportUpdate:
    """An EG (re)connected or changed its LPC support. Not a data event: it never makes the EG
    the active one, but it marks when the sidecar read that EG's connection-time heartbeat."""

    ski: str


@attrs.frozen
class Heartbeat:
    """DataUpdateHeartbeat: one EG heartbeat arrived."""

    ski: str


@attrs.frozen
class LimitUpdated:
    """DataUpdateLimit plus the ConsumptionLimit read that followed it.

    ski == "" marks a re-read after a reconnect; a re-read equal to the engine's current view
    (same value and is_active, end within 2 s) is not a new limit.
    """

    ski: str
    limit: SidecarLimit


@attrs.frozen
class WriteApprovalRequired:
    """WriteApprovalRequired plus the PendingConsumptionLimit read: (msg_counter, limit) pairs.

    sidecar_heartbeat_within is the answer of IsHeartbeatWithinDuration when the runtime asked
    (see LpcEngine.needs_sidecar_heartbeat_check), else None.
    """

    ski: str
    pending: tuple[tuple[int, SidecarLimit], ...]
    sidecar_heartbeat_within: bool | None = None


@attrs.frozen
class FailsafeLimitUpdated:
    """DataUpdateFailsafeConsumptionActivePowerLimit plus the value read."""

    ski: str
    limit_W: float


@attrs.frozen
class FailsafeDurationUpdated:
    """DataUpdateFailsafeDurationMinimum plus the value read (seconds)."""

    ski: str
    duration_s: float


@attrs.frozen
class Discovered:
    """A DISCOVERED discovery event."""

    ski: str
    is_trusted: bool


@attrs.frozen
class Removed:
    """A REMOVED discovery event."""

    ski: str


@attrs.frozen
class Tick:
    """The runtime woke at LpcEngine.next_deadline."""


Input = (
    Start
    | UseCaseSupportUpdate
    | Heartbeat
    | LimitUpdated
    | WriteApprovalRequired
    | FailsafeLimitUpdated
    | FailsafeDurationUpdated
    | Discovered
    | Removed
    | Tick
)
