"""The LPC engine under random event orders (hypothesis) and through a simulated 24 h day.

Invariants checked after every input: no Publish of a negative, NaN or infinite value; Init and
Failsafe publish the current FCAPL; at most one Publish per input; the last publication matches
the state; every pending write answered exactly once; next_deadline never in the past; and the
same inputs at the same times replayed into a fresh engine give the same decisions.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from eebus_bridge.config import LpcConfig, LpcTiming
from eebus_bridge.lpc import (
    FDM_MAX_S,
    FDM_MIN_S,
    Answer,
    Decision,
    Discovered,
    FailsafeDurationUpdated,
    FailsafeLimitUpdated,
    FailsafeValues,
    Heartbeat,
    Input,
    LimitUpdated,
    LpcEngine,
    LpcState,
    PersistFailsafeValues,
    Publish,
    Removed,
    SidecarLimit,
    Start,
    StateChanged,
    Tick,
    UseCaseSupportUpdate,
    WriteApprovalRequired,
)

EG = "0123456789abcdef0123456789abcdef01234567"
EG_SPELLED = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67"
EG2 = "fedcba9876543210fedcba9876543210fedcba98"

skis = st.sampled_from([EG, EG_SPELLED, EG2, "", "not an ski"])
watts = st.one_of(
    st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e300, 4200.0, 5e-324]),
    st.floats(min_value=-1e4, max_value=1e5),
)
durations = st.one_of(
    st.sampled_from([0.0, -5.0, 1e-9, 0.5, 1.0, 600.0, 1e9, math.nan, math.inf, -math.inf]),
    st.floats(min_value=-1e3, max_value=1e5),
)
limits = st.builds(SidecarLimit, watts, st.booleans(), durations, st.booleans())
fdms = st.one_of(
    st.sampled_from([FDM_MIN_S, FDM_MAX_S, 3 * 3600.0, 0.0, -1.0, math.nan, FDM_MAX_S + 1, 1e9]),
    st.floats(min_value=0, max_value=1e5),
)
steps = st.one_of(
    st.sampled_from([0.0, 1e-9, 0.5, 59.0, 60.0, 60.5, 119.0, 120.0, 121.0, 3600.0, 7200.0]),
    st.floats(min_value=0.0, max_value=100_000.0),
)
SHORT = LpcTiming(
    heartbeat_timeout_s=2.0, init_timeout_s=2.0, failsafe_recovery_s=2.0, write_window_s=1.0
)


class LpcEngineMachine(RuleBasedStateMachine):
    """Random inputs at random (forward-only) times into one engine."""

    def __init__(self) -> None:
        super().__init__()
        self.lpc = LpcConfig()
        self.engine = LpcEngine(self.lpc)
        self.now = 0.0
        self.log: list[tuple[Input, float, list[Decision]]] = []
        self.last_publish: Publish | None = None

    @initialize(
        policy=st.sampled_from(["spec", "permissive"]),
        expiry=st.sampled_from(["unlimited", "stay"]),
        timing=st.sampled_from([LpcTiming(), SHORT]),
        start=st.floats(min_value=0.0, max_value=1e6),
        persisted=st.none() | st.builds(FailsafeValues, watts, fdms),
    )
    def start(
        self,
        policy: Any,
        expiry: Any,
        timing: LpcTiming,
        start: float,
        persisted: FailsafeValues | None,
    ) -> None:
        self.lpc = LpcConfig(approval_policy=policy, on_failsafe_expiry=expiry, timing=timing)
        self.engine = LpcEngine(self.lpc, ems_ski_allowlist=[EG])
        self.now = start
        self.apply(Start(persisted))

    def apply(self, event: Input) -> list[Decision]:
        out = self.engine.handle(event, self.now)
        self.log.append((event, self.now, out))
        published = [d for d in out if isinstance(d, Publish)]
        assert len(published) <= 1, out
        fcapl = self.engine.failsafe_values.limit_W
        for p in published:
            assert p.limit_W is None or (math.isfinite(p.limit_W) and p.limit_W >= 0), p
            assert p.end is None or (math.isfinite(p.end) and p.end > self.now), p
            if p.state in (LpcState.INIT, LpcState.FAILSAFE):
                assert (p.limit_W, p.end) == (fcapl, None), p
            self.last_publish = p
        assert self.last_publish is not None
        status = self.engine.status(self.now)
        assert (self.last_publish.state, self.last_publish.limit_W, self.last_publish.end) == (
            status.state,
            status.limit_W,
            status.end,
        )
        changed = [d for d in out if isinstance(d, StateChanged)]
        if changed:
            assert changed[-1].new is self.engine.state
            assert published, "a state change is always published"
        deadline = self.engine.next_deadline
        assert deadline is None or deadline > self.now, (deadline, self.now)
        if isinstance(event, WriteApprovalRequired):
            answered = Counter(d.msg_counter for d in out if isinstance(d, Answer))
            assert answered == Counter(counter for counter, _ in event.pending)
        values = self.engine.failsafe_values
        assert math.isfinite(values.limit_W)
        assert values.limit_W >= 0
        return out

    @rule(step=steps)
    def wait(self, step: float) -> None:
        self.now += step

    @rule(step=steps)
    def tick(self, step: float) -> None:
        self.now += step
        self.apply(Tick())

    @rule()
    def tick_at_deadline(self) -> None:
        deadline = self.engine.next_deadline
        if deadline is not None:
            self.now = max(self.now, deadline)
        self.apply(Tick())

    @rule()
    def tick_just_before_deadline(self) -> None:
        deadline = self.engine.next_deadline
        if deadline is not None:
            self.now = max(self.now, math.nextafter(deadline, -math.inf))
        before = self.engine.state
        out = self.apply(Tick())
        if deadline is not None and deadline > self.now:
            assert self.engine.state is before
            assert out == []

    @rule(ski=skis)
    def heartbeat(self, ski: str) -> None:
        self.apply(Heartbeat(ski))

    @rule(ski=skis, limit=limits)
    def limit_updated(self, ski: str, limit: SidecarLimit) -> None:
        self.apply(LimitUpdated(ski, limit))

    @rule(
        ski=skis,
        pending=st.lists(st.tuples(st.integers(0, 5), limits), max_size=4),
        sidecar=st.none() | st.booleans(),
    )
    def write_approval(
        self, ski: str, pending: list[tuple[int, SidecarLimit]], sidecar: bool | None
    ) -> None:
        self.apply(WriteApprovalRequired(ski, tuple(pending), sidecar))

    @rule(ski=skis, value=watts)
    def failsafe_limit(self, ski: str, value: float) -> None:
        self.apply(FailsafeLimitUpdated(ski, value))

    @rule(ski=skis, value=fdms)
    def failsafe_duration(self, ski: str, value: float) -> None:
        self.apply(FailsafeDurationUpdated(ski, value))

    @rule(ski=skis)
    def support_update(self, ski: str) -> None:
        self.apply(UseCaseSupportUpdate(ski))

    @rule(ski=skis, trusted=st.booleans())
    def discovered(self, ski: str, trusted: bool) -> None:
        self.apply(Discovered(ski, trusted))

    @rule(ski=skis)
    def removed(self, ski: str) -> None:
        self.apply(Removed(ski))

    @invariant()
    def init_and_failsafe_publish_the_current_fcapl(self) -> None:
        if self.last_publish is not None and self.engine.state in (
            LpcState.INIT,
            LpcState.FAILSAFE,
        ):
            assert self.last_publish.limit_W == self.engine.failsafe_values.limit_W

    def teardown(self) -> None:
        """Same inputs, same times, fresh engine: the same decisions."""
        if not self.log:
            return
        replay = LpcEngine(self.lpc, ems_ski_allowlist=[EG])
        for event, at, out in self.log:
            assert replay.handle(event, at) == out


LpcEngineMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lpc_engine_random_event_orders = LpcEngineMachine.TestCase


# ============================================================ a simulated day

DAY = 86400.0
OUTAGES = [(10800.0, 10980.0), (28800.0, 29100.0), (57900.0, 58500.0)]  # 3, 5 and 10 min


def _offline(t: float) -> bool:
    return any(start <= t < end for start, end in OUTAGES)


def _day() -> list[tuple[float, Input | LpcState]]:
    """Heartbeats every 60 s, a 10 min limit every 15 min, three outages (the EG is gone and
    reconnects at the end), a new FCAPL at noon; LpcState items are checkpoints."""
    items: list[tuple[float, Input | LpcState]] = [(1.0, UseCaseSupportUpdate(EG))]
    items += [(t, Heartbeat(EG)) for t in range(30, int(DAY), 60) if not _offline(t)]
    items += [(end, UseCaseSupportUpdate(EG)) for _, end in OUTAGES]
    for k in range(96):
        at = 900.0 * k + 10
        if _offline(at):
            continue
        limit = SidecarLimit(1000.0 + 500 * (k % 5), True, 600.0)
        items.append((at, WriteApprovalRequired(EG, ((k, limit),))))
        items.append((at + 0.5, LimitUpdated(EG, limit)))
    items.append((43200.0, FailsafeLimitUpdated(EG, 3000.0)))
    checkpoints = [
        (5, LpcState.INIT),
        (20, LpcState.LIMITED),
        (700, LpcState.UNLIMITED_CONTROLLED),
        (10900, LpcState.FAILSAFE),
        (11100, LpcState.FAILSAFE),
        (11131, LpcState.UNLIMITED_AUTONOMOUS),
        (11720, LpcState.LIMITED),
        (28900, LpcState.FAILSAFE),
        (29260, LpcState.UNLIMITED_AUTONOMOUS),
        (29720, LpcState.LIMITED),
        (43201, LpcState.UNLIMITED_CONTROLLED),
        (58000, LpcState.FAILSAFE),
        (58520, LpcState.LIMITED),
        (86399, LpcState.UNLIMITED_CONTROLLED),
    ]
    items += [(float(t), state) for t, state in checkpoints]
    return sorted(items, key=lambda item: item[0])  # stable: same-time items keep their order


def test_simulated_day_ends_in_the_expected_states_quickly() -> None:
    started = time.perf_counter()
    engine = LpcEngine(LpcConfig())
    log: list[tuple[float, list[Decision]]] = [(0.0, engine.handle(Start(), 0.0))]
    for at, item in _day():
        while (deadline := engine.next_deadline) is not None and deadline <= at:
            log.append((deadline, engine.handle(Tick(), deadline)))
        if isinstance(item, LpcState):
            assert engine.state is item, at
            continue
        if isinstance(item, WriteApprovalRequired) and engine.needs_sidecar_heartbeat_check(at):
            item = attrs.evolve(item, sidecar_heartbeat_within=True)
        log.append((at, engine.handle(item, at)))
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0

    decisions = [d for _, out in log for d in out]
    unusual = [
        d.rule
        for d in decisions
        if isinstance(d, StateChanged) and d.rule not in ("LPC-910", "LPC-908/909")
    ]
    assert unusual == [
        "LPC-904",
        "LPC-912",
        "LPC-921",
        "LPC-918..920",
        "LPC-912",
        "LPC-921",
        "LPC-918..920",
        "LPC-911",
        "LPC-916",
    ]
    transitions = {(at, d.rule) for at, out in log for d in out if isinstance(d, StateChanged)}
    assert (math.nextafter(10770.0 + 120, math.inf), "LPC-912") in transitions
    assert (11010.0 + 120, "LPC-921") in transitions
    assert (math.nextafter(57870.0 + 120, math.inf), "LPC-911") in transitions
    answered = [d for d in decisions if isinstance(d, Answer)]
    assert len(answered) == 96 - 2
    assert all(a.approve for a in answered)
    persisted = [d for d in decisions if isinstance(d, PersistFailsafeValues)]
    assert persisted == [PersistFailsafeValues(FailsafeValues(3000.0, 7200.0))]
    failsafe_publications = [
        d for d in decisions if isinstance(d, Publish) and d.state is LpcState.FAILSAFE
    ]
    assert [p.limit_W for p in failsafe_publications] == [4200.0, 4200.0, 3000.0]
    state_changes = sum(isinstance(d, StateChanged) for d in decisions)
    assert sum(isinstance(d, Publish) for d in decisions) == 1 + state_changes
