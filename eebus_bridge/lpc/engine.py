"""The LPC state machine of spec/lpc.md (controllable-system side), sans-I/O like h11.

The runtime feeds ``LpcEngine.handle(input, now)`` and carries out the returned decisions; it
sleeps until ``next_deadline`` and then feeds ``Tick()``. The engine never reads a clock, so
``now`` (monotonic seconds) is the only time it knows, and the same inputs at the same times
always give the same decisions.

Time rules, used the same way everywhere:

- Strict rules ("now - t > T": heartbeat missing [LPC-911/912], Init timeout [LPC-906]) hold
  from the smallest float above ``t + T`` (``math.nextafter``). That float is the deadline, the
  rule is checked as ``now >= deadline``, so the transition happens at the first instant the
  condition holds and never at exactly ``t + T``. "Heartbeat present" is the exact negation:
  ``now <= t + T``; the write window [LPC-TS-036/037] is inclusive the same way.
- Elapsed-time rules (a limit's end, FDM elapsed [LPC-922], 120 s after the first returning
  heartbeat [LPC-921]) hold from ``t + T`` itself.
- Before any EG heartbeat was seen, the Start time stands in for the last heartbeat: the CS has
  seen no heartbeat since Start, so the heartbeat is "missing" 120 s after Start at the latest.
  That is the safe side: it can only bring Failsafe sooner, never later.
- A due deadline is applied at its own time, even when the runtime wakes late or the next input
  arrives long after it: chained transitions (Limited -> Failsafe -> Unlimited/autonomous) keep
  their spec timing, and an input is handled in the state that is right at its ``now``.
  Timed transitions form a chain without cycles (Init -> U/A; Limited -> U/C -> Failsafe -> U/A),
  so catching up always ends.
- ``now`` never goes back: an earlier ``now`` than the last one handled is taken as the last one.

Received limits: the remaining duration read from the sidecar becomes a monotonic end
(``now + duration``). A limit that is already expired when received (negative remaining
duration, or an end not after ``now``) counts as a received *deactivated* limit: the EG is in
control but nothing is in force. An inactive limit has no end. A limit that expires is cleared,
so it can never lead back to Limited.

Choices where spec/lpc.md is silent:

- In Failsafe, as in Unlimited/autonomous, a limit received while the heartbeat is missing is
  ignored (with a Note), not kept for later: [LPC-916] needs both at the time of the limit.
- An empty SKI on a limit, write or failsafe-value input means "source unknown" (a re-read after
  a reconnect): it counts for the active EG and never claims that role. A heartbeat needs an SKI.
- A failsafe value written by an EG other than the active one is ignored and the CS's value is
  written back, since the sidecar already took it without asking.
- Publish is decided once per input from (state, limit, end): a transition there and back within
  one input publishes nothing, as the outputs never saw the intermediate state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, NamedTuple

import attrs

from eebus_bridge.config import LpcConfig
from eebus_bridge.lpc.decisions import (
    Answer,
    Decision,
    Note,
    PersistFailsafeValues,
    Publish,
    RegisterSki,
    SendLocalData,
    StateChanged,
    WriteBackFailsafeDuration,
    WriteBackFailsafeLimit,
)
from eebus_bridge.lpc.inputs import (
    Discovered,
    FailsafeDurationUpdated,
    FailsafeLimitUpdated,
    Heartbeat,
    Input,
    LimitUpdated,
    Removed,
    Start,
    Tick,
    UseCaseSupportUpdate,
    WriteApprovalRequired,
)
from eebus_bridge.lpc.values import EngineStatus, FailsafeValues, LpcState, SidecarLimit
from eebus_bridge.ski import is_valid_ski, normalize_ski

_INIT: Final = LpcState.INIT
_LIMITED: Final = LpcState.LIMITED
_CONTROLLED: Final = LpcState.UNLIMITED_CONTROLLED
_AUTONOMOUS: Final = LpcState.UNLIMITED_AUTONOMOUS
_FAILSAFE: Final = LpcState.FAILSAFE

FDM_MIN_S: Final = 2 * 3600.0
"""Smallest failsafe duration minimum an EG may write [LPC-022/1..4]."""
FDM_MAX_S: Final = 24 * 3600.0
"""Largest failsafe duration minimum an EG may write [LPC-022/1..4]."""
REREAD_END_TOLERANCE_S: Final = 2.0
"""A re-read limit whose end is this close to the engine's is the same limit (the sidecar
rounds the remaining duration to 1 s)."""

LPC_001_REASON: Final = "LPC-001: Active Power Consumption Limit must be >= 0 W"
# The sidecar applies an approved write at once and reports it with DataUpdateLimit; one that
# is not read back within the approval deadline is taken as never applied (spec/wire.md).
APPROVED_WRITE_READ_S: Final = 10.0

# Where a received limit leads: (state, limit is active) -> (next state, rule). spec/lpc.md
# "States and transitions"; same state = a new limit value, no transition. The spec names the
# Unlimited/autonomous rows' rules only on the inactive row; both carry that range here.
_ON_LIMIT: Final[dict[tuple[LpcState, bool], tuple[LpcState, str]]] = {
    (_INIT, True): (_LIMITED, "LPC-904"),
    (_INIT, False): (_CONTROLLED, "LPC-902/905"),
    (_LIMITED, True): (_LIMITED, ""),
    (_LIMITED, False): (_CONTROLLED, "LPC-908/909"),
    (_CONTROLLED, True): (_LIMITED, "LPC-910"),
    (_CONTROLLED, False): (_CONTROLLED, ""),
    (_AUTONOMOUS, True): (_LIMITED, "LPC-918..920"),
    (_AUTONOMOUS, False): (_CONTROLLED, "LPC-918..920"),
    (_FAILSAFE, True): (_LIMITED, "LPC-916"),
    (_FAILSAFE, False): (_CONTROLLED, "LPC-916"),
}

# States in which a limit counts only while the EG's heartbeat is present; otherwise it is
# ignored ("stay (limits ignored)" for Unlimited/autonomous; Failsafe needs "heartbeat present
# and a limit received after entering Failsafe" [LPC-916]).
_LIMIT_NEEDS_HEARTBEAT: Final = frozenset({_AUTONOMOUS, _FAILSAFE})

# States in which approval_policy "spec" approves writes only within write_window_s after an
# EG heartbeat [LPC-TS-036/037].
_WRITE_GATED: Final = frozenset({_INIT, _FAILSAFE, _AUTONOMOUS})

# Entering these clears the received limit and the active EG (spec/lpc.md).
_CLEARING: Final = frozenset({_FAILSAFE, _AUTONOMOUS})

# The limit in force is the FCAPL in these states ("Limit per state").
_FCAPL_STATES: Final = frozenset({_INIT, _FAILSAFE})


class LpcUsageError(RuntimeError):
    """The runtime broke the engine's protocol (an input before Start, a second Start)."""


@attrs.frozen
class _ReceivedLimit:
    """The EG's limit as the engine holds it; end is monotonic, None = no end (or inactive)."""

    value: float
    is_active: bool
    end: float | None


class _Timer(NamedTuple):
    deadline: float
    target: LpcState
    rule: str
    expires_limit: bool = False


@attrs.frozen
class _Refusal:
    """Why an input's SKI is not accepted."""

    reason: str


def _strictly_after(t: float, span: float) -> float:
    """The first instant at which ``now - t > span`` holds (see the module docstring)."""
    return math.nextafter(t + span, math.inf)


def _is_valid_power(value: float) -> bool:
    return math.isfinite(value) and value >= 0.0


class LpcEngine:
    """The LPC controllable-system state machine; see the module docstring for time rules."""

    def __init__(
        self,
        lpc: LpcConfig,
        *,
        ems_ski_allowlist: Iterable[str] = (),
        accept_unknown_ems: bool = False,
    ) -> None:
        if not _is_valid_power(lpc.failsafe_limit_W):
            raise ValueError(f"failsafe_limit_W must be finite and >= 0: {lpc.failsafe_limit_W}")
        if not (math.isfinite(lpc.failsafe_duration_s) and lpc.failsafe_duration_s > 0):
            raise ValueError(f"failsafe_duration_s must be > 0: {lpc.failsafe_duration_s}")
        allowlist = set()
        for raw in ems_ski_allowlist:
            if not is_valid_ski(raw):
                raise ValueError(f"not an SKI (40 hex characters): {raw!r}")
            allowlist.add(normalize_ski(raw))
        self._lpc = lpc
        self._timing = lpc.timing
        self._allowlist: frozenset[str] = frozenset(allowlist)
        self._accept_unknown_ems = accept_unknown_ems

        self._started = False
        self._now = 0.0  # the latest time handled; never goes back
        self._start_at = 0.0
        self._state = _INIT
        self._entered_at = 0.0  # when the current state was entered
        self._failsafe = FailsafeValues(lpc.failsafe_limit_W, lpc.failsafe_duration_s)
        self._limit: _ReceivedLimit | None = None
        self._active_ski: str | None = None
        self._last_heartbeat_at: float | None = None
        self._last_heartbeat_ski: str | None = None
        self._failsafe_first_heartbeat_at: float | None = None  # [LPC-921]
        self._support_update_at: dict[str, float] = {}  # SKI -> last UseCaseSupportUpdate
        self._published: Publish | None = None
        self._approved_unread_at: float | None = None  # an approved write not yet read back

    # ----------------------------------------------------------------- public queries

    @property
    def state(self) -> LpcState:
        return self._state

    @property
    def failsafe_values(self) -> FailsafeValues:
        return self._failsafe

    @property
    def next_deadline(self) -> float | None:
        """When the runtime must feed Tick(); None = nothing is timed. After handle(now) it is
        always later than now."""
        if not self._started:
            return None
        timers = self._timers()
        return min(t.deadline for t in timers) if timers else None

    def needs_sidecar_heartbeat_check(self, now: float) -> bool:
        """True when approving a write now may depend on the connection-time heartbeat, so the
        runtime should ask IsHeartbeatWithinDuration and pass the answer along.

        That is: policy "spec", the state gates writes (or a timed transition is due, so it may
        by the time the write is handled), no heartbeat within write_window_s, and an EG's
        UseCaseSupportUpdate within write_window_s (the connection-time heartbeat only counts
        then).
        """
        if not self._started or self._lpc.approval_policy != "spec":
            return False
        deadline = self.next_deadline
        if self._state not in _WRITE_GATED and (deadline is None or deadline > now):
            return False
        window = self._timing.write_window_s
        if self._last_heartbeat_at is not None and now <= self._last_heartbeat_at + window:
            return False
        return any(now <= at + window for at in self._support_update_at.values())

    def refuses_data_from(self, raw_ski: str, now: float) -> bool:
        """True when a data event of this EG would be refused: another EG is the active one and
        the state keeps it so (neither Failsafe nor Unlimited/autonomous), with no timed
        transition due by ``now`` (one could clear the active EG first). The runtime then need
        not read the value the event announces (issue 13, item 2)."""
        if self._active_ski is None or self._state in _CLEARING:
            return False
        if not is_valid_ski(raw_ski) or normalize_ski(raw_ski) == self._active_ski:
            return False
        deadline = self.next_deadline
        return deadline is None or deadline > now

    def current_sidecar_limit(self, now: float) -> SidecarLimit:
        """The limit as the CS sees it, for handshake step 6 and write-backs.

        Without a received limit: inactive, no end, value max_nominal_power_W. A timed limit
        reports its remaining duration; one that has ended by ``now`` counts as gone.
        """
        limit = self._limit
        if limit is None or (limit.end is not None and limit.end <= now):
            return SidecarLimit(self._lpc.max_nominal_power_W, False, 0.0, True)
        remaining = 0.0 if limit.end is None else limit.end - now
        return SidecarLimit(limit.value, limit.is_active, remaining, True)

    def limit_to_resend(self, now: float) -> SidecarLimit | None:
        """The limit to write with SetConsumptionLimit now, or None while a write this engine
        approved has not been read back (at most APPROVED_WRITE_READ_S): the sidecar then holds
        the energy guard's newer value, and re-sending the older view would overwrite it."""
        approved_at = self._approved_unread_at
        if approved_at is not None and now - approved_at < APPROVED_WRITE_READ_S:
            return None
        return self.current_sidecar_limit(now)

    def status(self, now: float) -> EngineStatus:
        age = None if self._last_heartbeat_at is None else max(0.0, now - self._last_heartbeat_at)
        return EngineStatus(
            state=self._state,
            limit_W=self._limit_in_force(),
            end=self._end_in_force(),
            failsafe=self._failsafe,
            last_heartbeat_age_s=age,
            active_ski=self._active_ski,
            next_deadline=self.next_deadline,
        )

    # ----------------------------------------------------------------- the one entry point

    def handle(self, event: Input, now: float) -> list[Decision]:
        """Apply one input at monotonic time ``now``; return what the runtime must do.

        Timed transitions that fell due up to ``now`` are applied first (each at its own
        deadline), then the input, then any transition the input made due. At most one
        Publish comes last.
        """
        out: list[Decision] = []
        if isinstance(event, Start):
            if self._started:
                raise LpcUsageError("Start was already handled; it comes once per process")
            self._start(event, now, out)
            self._publish_if_changed(out)
            return out
        if not self._started:
            raise LpcUsageError("the first input must be Start")
        now = max(now, self._now)
        self._advance(now, out)
        match event:
            case Tick():
                pass
            case Heartbeat():
                self._on_heartbeat(event, now, out)
            case LimitUpdated():
                self._on_limit(event, now, out)
            case WriteApprovalRequired():
                self._on_write_approval(event, now, out)
            case FailsafeLimitUpdated():
                self._on_failsafe_limit(event, out)
            case FailsafeDurationUpdated():
                self._on_failsafe_duration(event, out)
            case UseCaseSupportUpdate():
                self._on_support_update(event, now, out)
            case Discovered():
                self._on_discovered(event, out)
            case Removed():
                self._on_removed(event, out)
        self._advance(now, out)
        self._publish_if_changed(out)
        return out

    # ----------------------------------------------------------------- time

    def _timers(self) -> list[_Timer]:
        """The timed rows of the transition table for the current state, in table order."""
        timing = self._timing
        match self._state:
            case LpcState.INIT:
                init_over = _strictly_after(self._start_at, timing.init_timeout_s)
                return [_Timer(init_over, _AUTONOMOUS, "LPC-906")]
            case LpcState.LIMITED:
                timers = [_Timer(self._heartbeat_missing_at(), _FAILSAFE, "LPC-911")]
                if self._limit is not None and self._limit.end is not None:
                    timers.append(_Timer(self._limit.end, _CONTROLLED, "LPC-908/909", True))
                return timers
            case LpcState.UNLIMITED_CONTROLLED:
                return [_Timer(self._heartbeat_missing_at(), _FAILSAFE, "LPC-912")]
            case LpcState.UNLIMITED_AUTONOMOUS:
                return []
            case LpcState.FAILSAFE:
                timers = []
                if self._lpc.on_failsafe_expiry == "unlimited":
                    fdm_end = self._entered_at + self._failsafe.duration_s
                    timers.append(_Timer(fdm_end, _AUTONOMOUS, "LPC-922"))
                if self._failsafe_first_heartbeat_at is not None:
                    recovered = self._failsafe_first_heartbeat_at + timing.failsafe_recovery_s
                    timers.append(_Timer(recovered, _AUTONOMOUS, "LPC-921"))
                return timers

    def _advance(self, now: float, out: list[Decision]) -> None:
        """Apply every timed transition due by ``now``, each at its own deadline."""
        while True:
            due = [t for t in self._timers() if t.deadline <= now]
            if not due:
                break
            timer = min(due, key=lambda t: t.deadline)  # ties: first row wins (min is stable)
            self._now = max(self._now, timer.deadline)
            if timer.expires_limit:
                self._limit = None
            self._enter(timer.target, timer.rule, self._now, out)
        self._now = now

    def _heartbeat_reference(self) -> float:
        return self._start_at if self._last_heartbeat_at is None else self._last_heartbeat_at

    def _heartbeat_missing_at(self) -> float:
        return _strictly_after(self._heartbeat_reference(), self._timing.heartbeat_timeout_s)

    def _heartbeat_present(self, now: float) -> bool:
        return now <= self._heartbeat_reference() + self._timing.heartbeat_timeout_s

    def _heartbeat_within_write_window(self, now: float, ski: str) -> bool:
        """[LPC-TS-036/037]: a heartbeat of this EG (any EG when the source is unknown)."""
        if self._last_heartbeat_at is None:
            return False
        if ski and self._last_heartbeat_ski != ski:
            return False
        return now <= self._last_heartbeat_at + self._timing.write_window_s

    def _record_heartbeat(self, at: float, ski: str) -> None:
        if self._last_heartbeat_at is None or at >= self._last_heartbeat_at:
            self._last_heartbeat_at = at
            self._last_heartbeat_ski = ski
        if self._state is _FAILSAFE and self._failsafe_first_heartbeat_at is None:
            # [LPC-921] counts from the first heartbeat seen after entry; a connection-time
            # heartbeat learnt late counts from the entry at the earliest.
            self._failsafe_first_heartbeat_at = max(at, self._entered_at)

    # ----------------------------------------------------------------- state

    def _enter(self, new: LpcState, rule: str, at: float, out: list[Decision]) -> None:
        out.append(StateChanged(self._state, new, rule))
        self._state = new
        self._entered_at = at
        if new in _CLEARING:
            self._limit = None
            self._active_ski = None
        if new is _FAILSAFE:
            self._failsafe_first_heartbeat_at = None

    def _limit_in_force(self) -> float | None:
        if self._state in _FCAPL_STATES:
            return self._failsafe.limit_W
        if self._state is _LIMITED and self._limit is not None:
            return self._limit.value
        return None

    def _end_in_force(self) -> float | None:
        if self._state is _LIMITED and self._limit is not None:
            return self._limit.end
        return None

    def _publish_if_changed(self, out: list[Decision]) -> None:
        """Publication rules: one Publish per state change or new limit, none otherwise."""
        publication = Publish(self._state, self._limit_in_force(), self._end_in_force())
        if publication != self._published:
            self._published = publication
            out.append(publication)

    # ----------------------------------------------------------------- which EG is in charge

    def _accept_source(self, raw_ski: str, what: str) -> str | _Refusal:
        """The SKI a data event counts for; the first valid one claims the active-EG role.

        Returns the normalised SKI, "" for an unknown source (a re-read) while no EG is active,
        or a refusal for invalid SKIs and EGs other than the active one.
        """
        if raw_ski == "":
            return self._active_ski or ""
        if not is_valid_ski(raw_ski):
            return _Refusal(f"{what}: invalid SKI {raw_ski!r}")
        ski = normalize_ski(raw_ski)
        if self._active_ski is None:
            self._active_ski = ski
        elif ski != self._active_ski:
            return _Refusal(f"{what} from {ski}: {self._active_ski} is the active energy guard")
        return ski

    # ----------------------------------------------------------------- inputs

    def _start(self, event: Start, now: float, out: list[Decision]) -> None:
        self._started = True
        self._now = self._start_at = self._entered_at = now
        if event.persisted is not None:
            self._failsafe = self._restored(event.persisted, out)

    def _restored(self, stored: FailsafeValues, out: list[Decision]) -> FailsafeValues:
        """[LPC-TS-044]: persisted values replace the configured ones when they are valid."""
        limit_W = stored.limit_W
        if not _is_valid_power(limit_W):
            limit_W = self._failsafe.limit_W
            out.append(
                Note(
                    "warning",
                    f"stored failsafe limit {stored.limit_W!r} W is invalid; "
                    f"using the configured {limit_W} W",
                )
            )
        duration_s = stored.duration_s
        device_max = self._lpc.failsafe_duration_max_s
        if not (math.isfinite(duration_s) and FDM_MIN_S <= duration_s <= FDM_MAX_S):
            duration_s = self._failsafe.duration_s
            out.append(
                Note(
                    "warning",
                    f"stored failsafe duration {stored.duration_s!r} s is outside "
                    f"2 h..24 h; using the configured {duration_s} s",
                )
            )
        elif duration_s > device_max:
            duration_s = device_max
            out.append(
                Note(
                    "warning",
                    f"stored failsafe duration {stored.duration_s} s is above the "
                    f"device maximum; using {device_max} s [LPC-022/5]",
                )
            )
        return FailsafeValues(limit_W, duration_s)

    def _on_heartbeat(self, event: Heartbeat, now: float, out: list[Decision]) -> None:
        if event.ski == "":
            out.append(Note("warning", "heartbeat ignored: no SKI"))
            return
        source = self._accept_source(event.ski, "heartbeat")
        if isinstance(source, _Refusal):
            out.append(Note("info", f"{source.reason} (ignored)"))
            return
        self._record_heartbeat(now, source)

    def _on_limit(self, event: LimitUpdated, now: float, out: list[Decision]) -> None:
        self._approved_unread_at = None  # whatever was approved, this read has it (or lost it)
        source = self._accept_source(event.ski, "limit")
        if isinstance(source, _Refusal):
            out.append(Note("info", f"{source.reason} (ignored)"))
            return
        read = event.limit
        if not _is_valid_power(read.value):
            out.append(Note("warning", f"limit ignored: value {read.value!r} W is not >= 0"))
            return
        if not math.isfinite(read.duration_s):
            out.append(Note("warning", f"limit ignored: duration {read.duration_s!r} s"))
            return
        if event.ski == "" and self._is_current_view(read, now):
            return
        if self._state in _LIMIT_NEEDS_HEARTBEAT and not self._heartbeat_present(now):
            out.append(
                Note(
                    "info",
                    f"limit ignored in {self._state.value}: no heartbeat from the energy guard",
                )
            )
            return
        received = self._received(read, now, out)
        target, rule = _ON_LIMIT[(self._state, received.is_active)]
        self._limit = received
        if target is not self._state:
            self._enter(target, rule, now, out)

    def _received(self, read: SidecarLimit, now: float, out: list[Decision]) -> _ReceivedLimit:
        if not read.is_active:
            return _ReceivedLimit(read.value, False, None)
        if read.duration_s == 0:
            return _ReceivedLimit(read.value, True, None)
        end = now + read.duration_s
        if end <= now:
            out.append(
                Note(
                    "info",
                    f"limit {read.value} W had already expired "
                    f"({read.duration_s} s); taken as deactivated",
                )
            )
            return _ReceivedLimit(read.value, False, None)
        return _ReceivedLimit(read.value, True, end)

    def _is_current_view(self, read: SidecarLimit, now: float) -> bool:
        """A re-read that only reflects what the engine already holds (ends within 2 s; the
        end of an inactive limit does not matter)."""
        view = self.current_sidecar_limit(now)
        if (read.value, read.is_active) != (view.value, view.is_active):
            return False
        if not read.is_active:
            return True
        if (read.duration_s == 0) != (view.duration_s == 0):
            return False
        return abs(read.duration_s - view.duration_s) <= REREAD_END_TOLERANCE_S

    def _on_write_approval(
        self, event: WriteApprovalRequired, now: float, out: list[Decision]
    ) -> None:
        """Every pending entry gets exactly one Answer."""
        source = self._accept_source(event.ski, "write")
        if isinstance(source, _Refusal):
            out.append(Note("info", f"{source.reason} (denied)"))
            out.extend(Answer(counter, False, source.reason) for counter, _ in event.pending)
            return
        if event.sidecar_heartbeat_within:
            self._accept_connection_heartbeat(source, now)
        gate_closed = (
            self._lpc.approval_policy == "spec"
            and self._state in _WRITE_GATED
            and not self._heartbeat_within_write_window(now, source)
        )
        for counter, limit in event.pending:
            if not _is_valid_power(limit.value):
                out.append(Answer(counter, False, f"{LPC_001_REASON} (got {limit.value!r})"))
            elif gate_closed:
                out.append(Answer(counter, False, self._gate_reason()))
            else:
                out.append(Answer(counter, True, ""))
                self._approved_unread_at = now

    def _gate_reason(self) -> str:
        window = self._timing.write_window_s
        return (
            f"LPC-TS-036/037: no heartbeat from the energy guard within the last {window:g} s "
            f"(state {self._state.value})"
        )

    def _accept_connection_heartbeat(self, ski: str, now: float) -> None:
        """The sidecar reads an EG's first heartbeat when it connects and makes no event for
        it; with IsHeartbeatWithinDuration true and that EG's UseCaseSupportUpdate within the
        write window, it counts as a heartbeat at the UseCaseSupportUpdate time."""
        if ski:
            connected = (
                [(self._support_update_at[ski], ski)] if ski in self._support_update_at else []
            )
        else:
            connected = [(at, s) for s, at in self._support_update_at.items()]
        if not connected:
            return
        at, connected_ski = max(connected)
        if now <= at + self._timing.write_window_s:
            self._record_heartbeat(at, connected_ski)

    def _on_failsafe_limit(self, event: FailsafeLimitUpdated, out: list[Decision]) -> None:
        """Accept a finite FCAPL >= 0; otherwise keep the previous one and write it back."""
        previous = self._failsafe.limit_W
        source = self._accept_source(event.ski, "failsafe limit")
        if isinstance(source, _Refusal):
            out.append(Note("info", f"{source.reason} (ignored)"))
            out.append(WriteBackFailsafeLimit(previous))
            return
        if not _is_valid_power(event.limit_W):
            out.append(
                Note(
                    "warning",
                    f"failsafe limit {event.limit_W!r} W rejected (must be finite "
                    f"and >= 0); keeping {previous} W",
                )
            )
            out.append(WriteBackFailsafeLimit(previous))
            return
        if event.limit_W != previous:
            self._failsafe = attrs.evolve(self._failsafe, limit_W=event.limit_W)
            out.append(PersistFailsafeValues(self._failsafe))

    def _on_failsafe_duration(self, event: FailsafeDurationUpdated, out: list[Decision]) -> None:
        """[LPC-022/1..5]: accept 2 h..24 h, clamp to the device maximum and write that back;
        anything else keeps the previous value and writes it back."""
        previous = self._failsafe.duration_s
        source = self._accept_source(event.ski, "failsafe duration")
        if isinstance(source, _Refusal):
            out.append(Note("info", f"{source.reason} (ignored)"))
            out.append(WriteBackFailsafeDuration(previous))
            return
        duration_s = event.duration_s
        if not (math.isfinite(duration_s) and FDM_MIN_S <= duration_s <= FDM_MAX_S):
            out.append(
                Note(
                    "warning",
                    f"failsafe duration {duration_s!r} s rejected (outside "
                    f"2 h..24 h) [LPC-022]; keeping {previous} s",
                )
            )
            out.append(WriteBackFailsafeDuration(previous))
            return
        device_max = self._lpc.failsafe_duration_max_s
        if duration_s > device_max:
            out.append(
                Note(
                    "info",
                    f"failsafe duration {duration_s} s is above the device maximum; "
                    f"set to {device_max} s [LPC-022/5]",
                )
            )
            duration_s = device_max
            out.append(WriteBackFailsafeDuration(duration_s))
        if duration_s != previous:
            self._failsafe = attrs.evolve(self._failsafe, duration_s=duration_s)
            out.append(PersistFailsafeValues(self._failsafe))

    def _on_support_update(
        self, event: UseCaseSupportUpdate, now: float, out: list[Decision]
    ) -> None:
        if not is_valid_ski(event.ski):
            out.append(
                Note("warning", f"use case support update ignored: invalid SKI {event.ski!r}")
            )
            return
        self._support_update_at[normalize_ski(event.ski)] = now
        out.append(
            SendLocalData(
                self._lpc.max_nominal_power_W, self.current_sidecar_limit(now), self._failsafe
            )
        )

    def _on_discovered(self, event: Discovered, out: list[Decision]) -> None:
        """Register an untrusted EG when allowlisted, or any when accept_unknown_ems is set."""
        if not is_valid_ski(event.ski):
            out.append(Note("warning", f"discovery ignored: invalid SKI {event.ski!r}"))
            return
        ski = normalize_ski(event.ski)
        if event.is_trusted:
            return
        if ski in self._allowlist:
            out.append(RegisterSki(ski))
        elif self._accept_unknown_ems:
            out.append(
                Note(
                    "warning",
                    f"registering UNKNOWN energy manager {ski} because "
                    "accept_unknown_ems is true: any EEBUS device on this network may now "
                    "limit this charger",
                )
            )
            out.append(RegisterSki(ski))
        else:
            out.append(
                Note("info", f"discovered energy manager {ski} ignored: not on the allowlist")
            )

    def _on_removed(self, event: Removed, out: list[Decision]) -> None:
        """A gone EG's connection-time heartbeat no longer counts; its loss itself is left to
        the heartbeat rule [LPC-911/912]."""
        if not is_valid_ski(event.ski):
            out.append(Note("warning", f"removal ignored: invalid SKI {event.ski!r}"))
            return
        ski = normalize_ski(event.ski)
        self._support_update_at.pop(ski, None)
        out.append(Note("info", f"energy manager {ski} removed"))
