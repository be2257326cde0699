"""Plain values the LPC engine shares with its inputs, decisions and status (spec/lpc.md)."""

from __future__ import annotations

import enum

import attrs


class LpcState(enum.Enum):
    """The five LPC states of spec/lpc.md; ``.value`` is the display name for logs and JSONL."""

    INIT = "Init"
    LIMITED = "Limited"
    UNLIMITED_CONTROLLED = "Unlimited/controlled"
    UNLIMITED_AUTONOMOUS = "Unlimited/autonomous"
    FAILSAFE = "Failsafe"


@attrs.frozen
class SidecarLimit:
    """A LoadLimit as read from the sidecar (ConsumptionLimit, PendingConsumptionLimit) or as
    the CS writes it (SetConsumptionLimit).

    Values read from the sidecar are untrusted: value may be NaN, infinite or negative.
    duration_s is the remaining time at read: 0 = no end, negative = already expired
    (the runtime converts the wire's nanoseconds).
    """

    value: float
    is_active: bool
    duration_s: float
    is_changeable: bool = True


@attrs.frozen
class FailsafeValues:
    """FCAPL (failsafe consumption active power limit) and FDM (failsafe duration minimum)."""

    limit_W: float
    duration_s: float


@attrs.frozen
class EngineStatus:
    """A snapshot for status displays and logs; times are monotonic seconds like ``now``."""

    state: LpcState
    limit_W: float | None  # in force now; None = unlimited
    end: float | None  # monotonic end of a timed limit; None = no end
    failsafe: FailsafeValues
    last_heartbeat_age_s: float | None  # None = no EG heartbeat seen since Start
    active_ski: str | None  # None = no energy guard in charge
    next_deadline: float | None
