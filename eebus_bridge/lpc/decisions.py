"""What the LPC engine asks the runtime to do: one frozen object per action."""

from __future__ import annotations

from typing import Literal

import attrs

from eebus_bridge.lpc.values import FailsafeValues, LpcState, SidecarLimit


@attrs.frozen
class Publish:
    """Hand this limit to the outputs. limit_W None = unlimited; end = monotonic time a timed
    limit ends (None = no end). At most one per input, none for repeated identical data."""

    state: LpcState
    limit_W: float | None
    end: float | None


@attrs.frozen
class StateChanged:
    """For the log: the transition and the spec rule that caused it (e.g. "LPC-911")."""

    old: LpcState
    new: LpcState
    rule: str


@attrs.frozen
class Answer:
    """ApproveOrDenyConsumptionLimit for one pending write; reason is "" when approved."""

    msg_counter: int
    approve: bool
    reason: str


@attrs.frozen
class WriteBackFailsafeLimit:
    """SetFailsafeConsumptionActivePowerLimit(limit_W, changeable): the EG's value was not taken."""

    limit_W: float


@attrs.frozen
class WriteBackFailsafeDuration:
    """SetFailsafeDurationMinimum(duration, changeable): the EG's value was not taken as is."""

    duration_s: float


@attrs.frozen
class PersistFailsafeValues:
    """Store these accepted failsafe values crash-safely; they come back through Start."""

    values: FailsafeValues


@attrs.frozen
class RegisterSki:
    """RegisterRemoteSki with this normalised SKI."""

    ski: str


@attrs.frozen
class SendLocalData:
    """Handshake step 6 again (nominal max, limit, FCAPL, FDM), then StartHeartbeat."""

    nominal_max_W: float
    limit: SidecarLimit
    failsafe: FailsafeValues


@attrs.frozen
class Note:
    """Something the runtime should log: a rejected value, an ignored input and why."""

    level: Literal["info", "warning"]
    message: str


Decision = (
    Publish
    | StateChanged
    | Answer
    | WriteBackFailsafeLimit
    | WriteBackFailsafeDuration
    | PersistFailsafeValues
    | RegisterSki
    | SendLocalData
    | Note
)
