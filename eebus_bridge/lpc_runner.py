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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from eebus_bridge.activity import ActivityFeed
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


def utc_now() -> datetime:
    return datetime.now(UTC)


class LpcRunner:
    """Engine + decision dispatch + the deadline sleep. One per process."""

    def __init__(
        self,
        config: Config,
        publications: LatestValue[Publication],
        *,
        wall_clock: Callable[[], datetime] = utc_now,
        activity: ActivityFeed | None = None,
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
        self._state_file: Path = config.lpc.state_file
        self._to_persist: LatestValue[FailsafeValues] = LatestValue()
        self._sidecar: trio.MemorySendChannel[SidecarAction] | None = None
        self._sleep: trio.CancelScope | None = None  # the lpc task's sleep until next_deadline

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
        """
        answers: list[Answer] = []
        self._apply(event, received_at, answers)
        if self._sleep is not None:
            self._sleep.deadline = self._next_deadline()
        return answers

    async def send(self, event: Input) -> None:
        """`apply`, with any answers routed to the attached sidecar connection."""
        for answer in self.apply(event):
            self._to_sidecar(answer)

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
        when given (the caller sends them), else to the attached sidecar connection."""
        now = trio.current_time()
        before = self.engine.status(now) if self.activity.observed else None
        decisions = self.engine.handle(event, now)
        for decision in decisions:
            if answers is not None and isinstance(decision, Answer):
                self._log_answer(decision)
                answers.append(decision)
            else:
                self._carry_out(decision, now, received_at)
        if before is not None:
            self._record_activity(event, decisions, before, now)

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

    def _carry_out(self, decision: Decision, now: float, received_at: float | None) -> None:
        if isinstance(decision, Publish):
            self._publish(decision, now, received_at)
        elif isinstance(decision, StateChanged):
            self.activity.record(
                "state", old=decision.old.value, new=decision.new.value, rule=decision.rule
            )
            log.info(
                "state %s -> %s [%s]",
                decision.old.value,
                decision.new.value,
                decision.rule,
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
                self._log_answer(decision)
            self._to_sidecar(decision)
        else:  # pragma: no cover - a new decision type the runner does not know yet
            log.error("unhandled LPC decision %r", decision)

    @staticmethod
    def _log_answer(answer: Answer) -> None:
        log.info(
            "write %d %s: %s",
            answer.msg_counter,
            "approved" if answer.approve else "denied",
            answer.reason or "-",
        )

    def _to_sidecar(self, action: SidecarAction) -> None:
        if self._sidecar is None:
            log.debug("no sidecar connection: dropped %r", action)
            return
        try:
            self._sidecar.send_nowait(action)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("sidecar connection not accepting actions: dropped %r", action)

    def _publish(self, decision: Publish, now: float, received_at: float | None) -> None:
        wall = self._wall_clock()
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
            "published %s: %s",
            decision.state.value,
            publication.summary(),
            extra={"fields": {"state": decision.state.value, "limit_W": decision.limit_W}},
        )

    async def _persist_task(self) -> None:
        """Write accepted failsafe values off the Trio thread; latest value wins."""
        seen = 0
        while True:
            seen, values = await self._to_persist.wait_newer(seen)
            try:
                await trio.to_thread.run_sync(save_failsafe_values, self._state_file, values)
            except OSError as exc:
                log.error("cannot store failsafe values in %s: %s", self._state_file, exc)
            else:
                log.info(
                    "stored failsafe values %g W / %g s in %s",
                    values.limit_W,
                    values.duration_s,
                    self._state_file,
                )
