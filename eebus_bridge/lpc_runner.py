"""The lpc task: the thin Trio shell around the pure LPC engine.

It owns the engine for the life of the process (a restart of the sidecar connection is a
communication loss, not a reboot), sleeps until the engine's next deadline with a cancel scope
(never a polling tick), and carries out the decisions: publications go to the outputs'
latest-value cell, failsafe values to the store, and the RPCs (write-backs, SKI registrations,
local data) to whichever sidecar connection is attached.

Inputs are applied synchronously by whoever hands them over (`apply`): the eebus task and its
event lanes, which run on the asyncio side of the trio-asyncio island — the same thread as every
Trio task. An input is therefore applied to the engine the moment its value is known, on the
caller's stack, and inputs reach the engine in exactly the order they are handed over (there is
no queue that two callers could overtake each other in). `apply` returns the answers to pending
writes instead of routing them through a channel, so the approval lane sends them at once; the
engine still records every answer (it decided it). After each input the sleeping lpc task's
deadline is moved to the engine's new next deadline, so time-driven transitions stay on time.

An input that yields answers has its reports (each answer's log line, the input's activity
records) held back until the caller says the answers are on their way (`answers_sent`), or at
the latest until the next input is applied, so reports keep the order of inputs. Reporting
took ~0.2 ms between the decision and the answer on the benchmark machine (log line, activity
observers), which the energy guard waited for; it now happens while the sidecar carries the
answer (README "Performance"). The approval lane reports when the answer's request has left, or
when its call ends, whichever comes first.

Publications turn the engine's monotonic times into wall-clock timestamps. When the wall clock
is stepped (clock_steps.py says how that is noticed without polling), the last publication is
made again from the same Publish decision: same state, limit and monotonic end, timestamps from
the corrected clock. That is the only publication not caused by an engine decision; it happens
once per step of more than 2 s and never otherwise (spec/lpc.md's publication rules hold).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import trio

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.clock_steps import STEP_THRESHOLD_S, ClockChanges, open_clock_changes
from eebus_bridge.config import Config
from eebus_bridge.failsafe_store import save_failsafe_values
from eebus_bridge.lpc import (
    Answer,
    Decision,
    FailsafeDurationUpdated,
    FailsafeLimitUpdated,
    FailsafeValues,
    Heartbeat,
    Input,
    LpcEngine,
    LpcState,
    Note,
    PersistFailsafeValues,
    Publish,
    RegisterSki,
    SendLocalData,
    Start,
    StateChanged,
    Tick,
    WriteApprovalRequired,
    WriteBackFailsafeDuration,
    WriteBackFailsafeLimit,
    to_external_limits,
)
from eebus_bridge.lpc.values import EngineStatus
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.wording import describe_answer, describe_state_change, format_duration

log = logging.getLogger("eebus_bridge.lpc")

# Decisions that need the sidecar; they go to the attached eebus connection, if any.
SidecarAction = (
    Answer | WriteBackFailsafeLimit | WriteBackFailsafeDuration | RegisterSki | SendLocalData
)
_SIDECAR_ACTIONS = (
    Answer,
    WriteBackFailsafeLimit,
    WriteBackFailsafeDuration,
    RegisterSki,
    SendLocalData,
)
_PERSIST_RETRY = BackoffPolicy(initial_s=1.0, maximum_s=60.0, healthy_s=math.inf, jitter=0.1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _log_answer(answer: Answer, event: Input) -> None:
    ski, limit = "", None
    if isinstance(event, WriteApprovalRequired):
        ski = event.ski
        limit = next((lim for counter, lim in event.pending if counter == answer.msg_counter), None)
    log.info(
        "%s",
        describe_answer(answer, ski, limit),
        extra={
            "fields": {
                "msg_counter": answer.msg_counter,
                "ski": ski,
                "approved": answer.approve,
                "reason": answer.reason,
                "value_W": None if limit is None else limit.value,
                "active": None if limit is None else limit.is_active,
                "duration_s": None if limit is None else limit.duration_s,
            }
        },
    )


class LpcRunner:
    """Engine + decision dispatch + the deadline sleep. One per process."""

    def __init__(
        self,
        config: Config,
        publications: LatestValue[Publication],
        *,
        wall_clock: Callable[[], datetime] = utc_now,
        activity: ActivityFeed | None = None,
        clock_changes: Callable[[], ClockChanges] = open_clock_changes,
    ) -> None:
        self.engine = LpcEngine(
            config.lpc,
            ems_ski_allowlist=config.eebus.ems_ski_allowlist,
            accept_unknown_ems=config.eebus.accept_unknown_ems,
        )
        self.publications = publications
        self.activity = activity if activity is not None else ActivityFeed()
        self._heartbeat_timeout_s = config.lpc.timing.heartbeat_timeout_s
        self._wall_clock = wall_clock
        self._open_clock_changes = clock_changes
        self._last_publish: Publish | None = None
        self._published_offset = 0.0  # wall - monotonic seconds used by the last publication
        self._state_file: Path = config.lpc.state_file
        self._to_persist: LatestValue[FailsafeValues] = LatestValue()
        self._sidecar: trio.MemorySendChannel[SidecarAction] | None = None
        self._sleep: trio.CancelScope | None = None  # the lpc task's sleep until next_deadline
        self._held_reports: list[Callable[[], None]] = []  # see `apply` and `answers_sent`

    # -- called by the runtime and the eebus task --------------------------------------------

    def start(self, persisted: FailsafeValues | None) -> None:
        """Start the engine (Init, and its one publication) before any task runs."""
        self._apply(Start(persisted=persisted))

    def apply(self, event: Input, received_at: float | None = None) -> list[Answer]:
        """Apply an input now; returns the answers to pending writes for the caller to send.

        Every other decision is carried out here (published, logged, persisted, or routed to
        the attached sidecar connection). Synchronous: callable from any Trio task and from the
        asyncio side of the island, which share the Trio thread (see the module docstring).
        received_at = when the event behind the input arrived (for the publication latency).
        When answers are returned, call `answers_sent` once they are sent (or failed).
        """
        answers: list[Answer] = []
        self._apply(event, received_at, answers)
        if self._sleep is not None:
            self._sleep.deadline = self._next_deadline()
        return answers

    def answers_sent(self) -> None:
        """Make the reports held back for the answers `apply` returned (module docstring).
        Idempotent: a second call, or one with nothing held, does nothing."""
        held, self._held_reports = self._held_reports, []
        for report in held:
            report()

    async def send(self, event: Input) -> None:
        """`apply`, with any answers routed to the attached sidecar connection."""
        for answer in self.apply(event):
            self._to_sidecar(answer)
        self.answers_sent()

    def attach_sidecar(self, actions: trio.MemorySendChannel[SidecarAction] | None) -> None:
        """Route sidecar decisions to this connection (None: no connection, they are dropped).

        Dropping is right: the sidecar auto-rejects unanswered writes, and the handshake of the
        next connection writes the engine's whole current view and replays discovery.
        """
        self._sidecar = actions

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The lpc task: Tick at each deadline, then sleep until the next. Runs until cancelled.

        Inputs do not pass through here (see `apply`); they move this sleep's deadline.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._persist_task)
            nursery.start_soon(self._clock_step_task)
            while True:
                with trio.CancelScope(deadline=self._next_deadline()) as sleep:
                    self._sleep = sleep
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._sleep = None
                self._apply(Tick())

    def _next_deadline(self) -> float:
        deadline = self.engine.next_deadline
        return math.inf if deadline is None else deadline

    def _apply(
        self, event: Input, received_at: float | None = None, answers: list[Answer] | None = None
    ) -> None:
        """Hand an input to the engine and carry out its decisions; answers go to `answers`
        when given (the caller sends them; their reports are held back), else to the attached
        sidecar connection."""
        self.answers_sent()  # a previous input's reports come first
        now = trio.current_time()
        before = self.engine.status(now) if self.activity.observed else None
        decisions = self.engine.handle(event, now)
        reports: list[Callable[[], None]] = []
        for decision in decisions:
            if answers is not None and isinstance(decision, Answer):
                reports.append(partial(_log_answer, decision, event))
                answers.append(decision)
            else:
                self._carry_out(decision, now, received_at, event)
        if before is not None:
            reports.append(partial(self._record_activity, event, decisions, before, now))
        if answers:
            self._held_reports.extend(reports)
        else:
            for report in reports:
                report()

    def _record_activity(
        self, event: Input, decisions: list[Decision], before: EngineStatus, now: float
    ) -> None:
        """Tell the activity feed what this input did (writes, failsafe writes, EG changes);
        state changes and publications are recorded where they are carried out."""
        record = self.activity.record
        if isinstance(event, WriteApprovalRequired):
            pending = dict(event.pending)
            for decision in decisions:
                if isinstance(decision, Answer) and decision.msg_counter in pending:
                    limit = pending[decision.msg_counter]
                    record(
                        "write",
                        ski=event.ski,
                        msg_counter=decision.msg_counter,
                        value_W=limit.value,
                        active=limit.is_active,
                        duration_s=limit.duration_s or None,
                        approved=decision.approve,
                        reason=decision.reason,
                    )
        elif isinstance(event, FailsafeLimitUpdated | FailsafeDurationUpdated) and event.ski:
            if isinstance(event, FailsafeLimitUpdated):
                what, value = "limit", event.limit_W
                accepted = self.engine.failsafe_values.limit_W == value
            else:
                what, value = "duration", event.duration_s
                accepted = self.engine.failsafe_values.duration_s == value
            written_back = next(
                (
                    d.limit_W if isinstance(d, WriteBackFailsafeLimit) else d.duration_s
                    for d in decisions
                    if isinstance(d, WriteBackFailsafeLimit | WriteBackFailsafeDuration)
                ),
                None,
            )
            record(
                "failsafe_write",
                ski=event.ski,
                what=what,
                value=value,
                accepted=accepted,
                written_back=written_back,
            )
        age = before.last_heartbeat_age_s
        if isinstance(event, Heartbeat) and age is not None and age > self._heartbeat_timeout_s:
            record("eg", event="heartbeat_back", ski=event.ski)
        after = self.engine.status(now)
        for decision in decisions:
            if isinstance(decision, StateChanged) and decision.new is LpcState.FAILSAFE:
                record("eg", event="heartbeat_lost", ski=before.active_ski)
        if after.active_ski != before.active_ski:
            if after.active_ski is not None:
                record("eg", event="active", ski=after.active_ski)
            else:
                record("eg", event="released", ski=before.active_ski)

    def _carry_out(
        self, decision: Decision, now: float, received_at: float | None, event: Input
    ) -> None:
        if isinstance(decision, Publish):
            self._publish(decision, now, received_at)
        elif isinstance(decision, StateChanged):
            self.activity.record(
                "state", old=decision.old.value, new=decision.new.value, rule=decision.rule
            )
            log.info(
                "%s",
                describe_state_change(decision),
                extra={
                    "fields": {
                        "old": decision.old.value,
                        "new": decision.new.value,
                        "rule": decision.rule,
                    }
                },
            )
        elif isinstance(decision, Note):
            log.log(
                logging.WARNING if decision.level == "warning" else logging.INFO,
                "%s",
                decision.message,
            )
        elif isinstance(decision, PersistFailsafeValues):
            self._to_persist.set(decision.values)
        elif isinstance(decision, _SIDECAR_ACTIONS):
            if isinstance(decision, Answer):
                _log_answer(decision, event)
            self._to_sidecar(decision)
        else:  # pragma: no cover - a new decision type the runner does not know yet
            log.error("unhandled LPC decision %r", decision)

    def _to_sidecar(self, action: SidecarAction) -> None:
        if self._sidecar is None:
            log.debug("no sidecar connection: dropped %r", action)
            return
        try:
            self._sidecar.send_nowait(action)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("sidecar connection not accepting actions: dropped %r", action)

    async def _clock_step_task(self) -> None:
        """Re-publish after a wall-clock step (see the module docstring)."""
        changes = self._open_clock_changes()
        try:
            while True:
                self._check_clock_step()
                await changes.wait()
        finally:
            changes.close()

    def _check_clock_step(self) -> None:
        self.answers_sent()  # held reports before a re-publication's, as before any input's
        now = trio.current_time()
        step = self._wall_clock().timestamp() - now - self._published_offset
        last = self._last_publish
        if abs(step) <= STEP_THRESHOLD_S or last is None:
            return
        log.warning(
            "wall clock stepped %s by %s: re-publishing the current limits with corrected times",
            "forward" if step > 0 else "back",
            format_duration(abs(step)),
            extra={"fields": {"clock_step_s": step}},
        )
        if last.end is not None and last.end <= now:
            # The limit's end is due: the engine's Tick publishes what follows, on the new clock.
            self._published_offset += step
            return
        self._publish(last, now, None, again=True)

    def _publish(
        self, decision: Publish, now: float, received_at: float | None, *, again: bool = False
    ) -> None:
        wall = self._wall_clock()
        self._last_publish = decision
        self._published_offset = wall.timestamp() - now
        end_time = None if decision.end is None else wall + timedelta(seconds=decision.end - now)
        publication = Publication(
            time=wall,
            state=decision.state.value,
            limit_W=decision.limit_W,
            end_time=end_time,
            external_limits=to_external_limits(decision.limit_W, end_time, wall),
        )
        self.publications.set(publication)
        self.activity.record(
            "publication",
            version=self.publications.version,
            state=publication.state,
            limit_W=publication.limit_W,
            end_time=None if end_time is None else end_time.isoformat(),
            latency_s=None if received_at is None else trio.current_time() - received_at,
        )
        log.info(
            "%s %s: %s",
            "re-published" if again else "published",
            decision.state.value,
            publication.summary(),
            extra={
                "fields": {
                    "state": decision.state.value,
                    "limit_W": decision.limit_W,
                    "end_time": None if end_time is None else end_time.isoformat(),
                }
            },
        )

    async def _persist_task(self) -> None:
        """Write accepted failsafe values off the Trio thread; the latest value wins.

        A write that fails (read-only folder, full disk) changes nothing else: the engine keeps
        the accepted values in memory, publishes and answers as before, and the write is retried
        (1 s, doubling to 60 s; a newer value replaces the one being retried) until it works.
        The failure is logged once per change of its cause, and once more when writing works
        again, never per attempt.
        """
        seen = 0
        retry = Backoff(_PERSIST_RETRY)
        failure: str | None = None  # the cause last logged; None while writing works
        while True:
            seen, values = await self._to_persist.wait_newer(seen)
            while True:
                try:
                    # Abandoned when cancelled: the write is crash-safe, and a stuck disk must
                    # not hold up the shutdown (runtime.py, "exit means exit").
                    await trio.to_thread.run_sync(
                        save_failsafe_values, self._state_file, values, abandon_on_cancel=True
                    )
                except OSError as exc:
                    cause = exc.strerror or str(exc)
                    if cause != failure:
                        failure = cause
                        log.error(
                            "cannot store failsafe values %g W / %s in %s: %s; they stay in "
                            "force in memory and the write is retried until it works",
                            values.limit_W,
                            format_duration(values.duration_s),
                            self._state_file,
                            cause,
                            extra={"fields": {"errno": exc.errno}},
                        )
                    else:
                        log.debug("failsafe values still not stored: %s", cause)
                    with trio.move_on_after(retry.next_delay()):
                        seen, values = await self._to_persist.wait_newer(seen)
                    continue
                break
            retry.reset()
            log.info(
                "stored failsafe values %g W / %s in %s%s",
                values.limit_W,
                format_duration(values.duration_s),
                self._state_file,
                "" if failure is None else " (writing works again)",
            )
            failure = None
