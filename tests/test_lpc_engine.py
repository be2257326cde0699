"""Conformance tests of the LPC engine against spec/lpc.md, named after the spec's rule IDs.

Every test drives a real LpcEngine with explicit monotonic times; nothing sleeps. Times start
at T0 = 1000 s so that a rule measured from 0 instead of from Start would show.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from eebus_bridge.config import LpcConfig, LpcTiming
from eebus_bridge.lpc import (
    FDM_MAX_S,
    FDM_MIN_S,
    LPC_001_REASON,
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
    LpcUsageError,
    Note,
    PersistFailsafeValues,
    Publish,
    RegisterSki,
    Removed,
    SendLocalData,
    SidecarLimit,
    Start,
    StateChanged,
    Tick,
    UseCaseSupportUpdate,
    WriteApprovalRequired,
    WriteBackFailsafeDuration,
    WriteBackFailsafeLimit,
)

INIT = LpcState.INIT
LIMITED = LpcState.LIMITED
CONTROLLED = LpcState.UNLIMITED_CONTROLLED
AUTONOMOUS = LpcState.UNLIMITED_AUTONOMOUS
FAILSAFE = LpcState.FAILSAFE

T0 = 1000.0
EG = "0123456789abcdef0123456789abcdef01234567"
EG_SPELLED = "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67"  # same SKI
EG2 = "fedcba9876543210fedcba9876543210fedcba98"
FCAPL = LpcConfig().failsafe_limit_W
NOMINAL = LpcConfig().max_nominal_power_W


def after(t: float) -> float:
    """The first float after t: where a strict "> t" rule starts to hold."""
    return math.nextafter(t, math.inf)


def active(value: float, duration_s: float = 0.0) -> SidecarLimit:
    return SidecarLimit(value, True, duration_s)


def inactive(value: float = 0.0) -> SidecarLimit:
    return SidecarLimit(value, False, 0.0)


def publishes(decisions: Sequence[Decision]) -> list[Publish]:
    return [d for d in decisions if isinstance(d, Publish)]


def changes(decisions: Sequence[Decision]) -> list[tuple[LpcState, LpcState, str]]:
    return [(d.old, d.new, d.rule) for d in decisions if isinstance(d, StateChanged)]


def answers(decisions: Sequence[Decision]) -> list[Answer]:
    return [d for d in decisions if isinstance(d, Answer)]


def notes(decisions: Sequence[Decision]) -> list[Note]:
    return [d for d in decisions if isinstance(d, Note)]


def of_type(decisions: Sequence[Decision], kind: type[Any]) -> list[Any]:
    return [d for d in decisions if isinstance(d, kind)]


def engine(lpc: LpcConfig | None = None, **kwargs: Any) -> LpcEngine:
    """A started engine (Start at T0), in Init."""
    e = LpcEngine(lpc or LpcConfig(), **kwargs)
    e.handle(Start(), T0)
    return e


def in_limited(at: float = T0 + 10, value: float = 3000.0, duration_s: float = 0.0) -> LpcEngine:
    e = engine()
    e.handle(Heartbeat(EG), at)
    e.handle(LimitUpdated(EG, active(value, duration_s)), at)
    assert e.state is LIMITED
    return e


def in_controlled(at: float = T0 + 10) -> LpcEngine:
    e = engine()
    e.handle(Heartbeat(EG), at)
    e.handle(LimitUpdated(EG, inactive()), at)
    assert e.state is CONTROLLED
    return e


def in_autonomous(lpc: LpcConfig | None = None) -> LpcEngine:
    """Unlimited/autonomous reached by the Init timeout at after(T0 + 120), no heartbeat."""
    e = engine(lpc)
    e.handle(Tick(), after(T0 + 120))
    assert e.state is AUTONOMOUS
    return e


def in_failsafe(lpc: LpcConfig | None = None) -> tuple[LpcEngine, float]:
    """Failsafe entered from Unlimited/controlled (heartbeat at T0 + 10); returns the entry time."""
    e = engine(lpc)
    e.handle(Heartbeat(EG), T0 + 10)
    e.handle(LimitUpdated(EG, inactive()), T0 + 10)
    entry = after(T0 + 130)
    assert e.next_deadline == entry
    e.handle(Tick(), entry)
    assert e.state is FAILSAFE
    return e, entry


# ============================================================ purity


def test_engine_imports_no_io_or_concurrency_library() -> None:
    code = (
        "import sys, eebus_bridge.lpc\n"
        "bad = [m for m in ('trio', 'asyncio', 'grpclib', 'trio_asyncio') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_engine_modules_import_only_allowed_modules() -> None:
    """No clock (time), no I/O, no logging: only the allowed standard modules."""
    allowed = {
        "__future__",
        "attrs",
        "enum",
        "math",
        "datetime",
        "typing",
        "collections.abc",
        "eebus_bridge.config",
        "eebus_bridge.ski",
    }
    package = Path(__file__).resolve().parent.parent / "eebus_bridge" / "lpc"
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name in allowed or name.startswith("eebus_bridge.lpc"), (source, name)


# ============================================================ Start, Init, publication at start


def test_start_publishes_init_fcapl_exactly_once() -> None:
    e = LpcEngine(LpcConfig())
    out = e.handle(Start(), T0)
    assert out == [Publish(INIT, FCAPL, None)]
    assert e.state is INIT


def test_regression_init_applies_failsafe_limit_immediately() -> None:
    """The anchor published nothing until its first 1 s tick; Init = FCAPL at once."""
    out = LpcEngine(LpcConfig(failsafe_limit_W=1234.0)).handle(Start(), T0)
    assert publishes(out) == [Publish(INIT, 1234.0, None)]


def test_inputs_before_start_or_a_second_start_are_usage_errors() -> None:
    e = LpcEngine(LpcConfig())
    with pytest.raises(LpcUsageError):
        e.handle(Tick(), T0)
    e.handle(Start(), T0)
    with pytest.raises(LpcUsageError):
        e.handle(Start(), T0 + 1)


# ============================================================ transition rows


@pytest.mark.parametrize(
    ("at", "state"),
    [(T0 + 119, INIT), (T0 + 120, INIT), (after(T0 + 120), AUTONOMOUS), (T0 + 500, AUTONOMOUS)],
)
def test_LPC_906_init_to_unlimited_autonomous_strictly_after_120_s(
    at: float, state: LpcState
) -> None:
    e = engine()
    e.handle(Heartbeat(EG), T0 + 5)  # heartbeats do not keep Init alive: only a limit does
    assert e.next_deadline == after(T0 + 120)
    out = e.handle(Tick(), at)
    assert e.state is state
    if state is AUTONOMOUS:
        assert changes(out) == [(INIT, AUTONOMOUS, "LPC-906")]
        assert publishes(out) == [Publish(AUTONOMOUS, None, None)]
        assert e.status(at).active_ski is None
    else:
        assert out == []


def test_LPC_906_first_row_wins_over_a_limit_that_arrives_after_the_init_timeout() -> None:
    e = engine()
    e.handle(Heartbeat(EG), T0 + 100)
    out = e.handle(LimitUpdated(EG, active(2000.0)), T0 + 121)
    assert changes(out) == [(INIT, AUTONOMOUS, "LPC-906"), (AUTONOMOUS, LIMITED, "LPC-918..920")]
    assert publishes(out) == [Publish(LIMITED, 2000.0, None)]


@pytest.mark.parametrize(("duration_s", "end"), [(0.0, None), (600.0, T0 + 610)])
def test_LPC_904_init_to_limited_on_an_active_limit(duration_s: float, end: float | None) -> None:
    e = engine()
    out = e.handle(LimitUpdated(EG, active(3000.0, duration_s)), T0 + 10)
    assert changes(out) == [(INIT, LIMITED, "LPC-904")]
    assert publishes(out) == [Publish(LIMITED, 3000.0, end)]


def test_LPC_902_905_init_to_unlimited_controlled_on_an_inactive_limit() -> None:
    e = engine()
    out = e.handle(LimitUpdated(EG, inactive(3000.0)), T0 + 10)
    assert changes(out) == [(INIT, CONTROLLED, "LPC-902/905")]
    assert publishes(out) == [Publish(CONTROLLED, None, None)]


@pytest.mark.parametrize(
    ("at", "state"),
    [(T0 + 160, LIMITED), (T0 + 170, LIMITED), (after(T0 + 170), FAILSAFE)],
)
def test_LPC_911_limited_to_failsafe_after_heartbeat_timeout(at: float, state: LpcState) -> None:
    e = in_limited()
    e.handle(Heartbeat(EG), T0 + 50)
    assert e.next_deadline == after(T0 + 170)
    out = e.handle(Tick(), at)
    assert e.state is state
    if state is FAILSAFE:
        assert changes(out) == [(LIMITED, FAILSAFE, "LPC-911")]
        assert publishes(out) == [Publish(FAILSAFE, FCAPL, None)]
        status = e.status(at)
        assert status.active_ski is None  # cleared on entering Failsafe
        assert e.current_sidecar_limit(at) == SidecarLimit(NOMINAL, False, 0.0, True)


def test_regression_heartbeat_timeout_is_120_s_not_60_s() -> None:
    e = in_limited()
    e.handle(Heartbeat(EG), T0 + 20)
    for t in (T0 + 81, T0 + 100, T0 + 140):
        assert e.handle(Tick(), t) == []
        assert e.state is LIMITED
    assert changes(e.handle(Tick(), after(T0 + 140))) == [(LIMITED, FAILSAFE, "LPC-911")]


def test_no_heartbeat_ever_counts_from_start() -> None:
    """Without any heartbeat since Start, the heartbeat is missing 120 s after Start."""
    e = engine(LpcConfig(approval_policy="permissive"))
    e.handle(LimitUpdated(EG, active(3000.0)), T0 + 100)
    assert e.state is LIMITED
    assert e.next_deadline == after(T0 + 120)
    assert changes(e.handle(Tick(), after(T0 + 120))) == [(LIMITED, FAILSAFE, "LPC-911")]


def test_LPC_908_limited_to_unlimited_controlled_when_the_limit_is_deactivated() -> None:
    e = in_limited()
    out = e.handle(LimitUpdated(EG, inactive(3000.0)), T0 + 20)
    assert changes(out) == [(LIMITED, CONTROLLED, "LPC-908/909")]
    assert publishes(out) == [Publish(CONTROLLED, None, None)]


@pytest.mark.parametrize(("at", "state"), [(T0 + 69.999, LIMITED), (T0 + 70, CONTROLLED)])
def test_LPC_909_limited_to_unlimited_controlled_at_the_exact_end(
    at: float, state: LpcState
) -> None:
    e = in_limited(duration_s=60.0)
    assert e.next_deadline == T0 + 70
    out = e.handle(Tick(), at)
    assert e.state is state
    if state is CONTROLLED:
        assert changes(out) == [(LIMITED, CONTROLLED, "LPC-908/909")]
        assert publishes(out) == [Publish(CONTROLLED, None, None)]


def test_regression_timed_limit_expiry_settles_without_oscillating() -> None:
    """The anchor flipped Limited <-> Unlimited/controlled every second after an expiry."""
    e = in_limited(duration_s=60.0)
    assert len(publishes(e.handle(Tick(), T0 + 70))) == 1
    for t in range(71, 101):
        e.handle(Heartbeat(EG), T0 + t)
        assert e.handle(Tick(), T0 + t + 0.5) == []
        assert e.state is CONTROLLED
    # a re-read of the expired limit (still active on the sidecar) does not bring it back
    out = e.handle(LimitUpdated("", active(3000.0, -40.0)), T0 + 101)
    assert e.state is CONTROLLED
    assert publishes(out) == []


@pytest.mark.parametrize(("at", "state"), [(T0 + 130, CONTROLLED), (after(T0 + 130), FAILSAFE)])
def test_LPC_912_unlimited_controlled_to_failsafe_after_heartbeat_timeout(
    at: float, state: LpcState
) -> None:
    e = in_controlled()
    out = e.handle(Tick(), at)
    assert e.state is state
    if state is FAILSAFE:
        assert changes(out) == [(CONTROLLED, FAILSAFE, "LPC-912")]
        assert publishes(out) == [Publish(FAILSAFE, FCAPL, None)]


def test_LPC_910_unlimited_controlled_to_limited_on_an_active_limit() -> None:
    e = in_controlled()
    out = e.handle(LimitUpdated(EG, active(1500.0, 30.0)), T0 + 20)
    assert changes(out) == [(CONTROLLED, LIMITED, "LPC-910")]
    assert publishes(out) == [Publish(LIMITED, 1500.0, T0 + 50)]


@pytest.mark.parametrize("limit", [active(1000.0), inactive()])
def test_unlimited_autonomous_stays_and_ignores_limits_while_heartbeat_missing(
    limit: SidecarLimit,
) -> None:
    e = in_autonomous()
    out = e.handle(LimitUpdated(EG, limit), T0 + 200)
    assert e.state is AUTONOMOUS
    assert publishes(out) == []
    assert any("no heartbeat" in n.message for n in notes(out))
    assert e.next_deadline is None  # nothing is timed in Unlimited/autonomous


@pytest.mark.parametrize(
    ("limit", "state", "published"),
    [(inactive(), CONTROLLED, None), (active(2500.0), LIMITED, 2500.0)],
)
def test_LPC_918_920_unlimited_autonomous_with_heartbeat_follows_a_limit(
    limit: SidecarLimit, state: LpcState, published: float | None
) -> None:
    e = in_autonomous()
    e.handle(Heartbeat(EG), T0 + 200)
    out = e.handle(LimitUpdated(EG, limit), T0 + 320)  # heartbeat 120 s old: still present
    assert changes(out) == [(AUTONOMOUS, state, "LPC-918..920")]
    assert publishes(out) == [Publish(state, published, None)]


def test_LPC_918_920_heartbeat_older_than_120_s_is_missing() -> None:
    e = in_autonomous()
    e.handle(Heartbeat(EG), T0 + 200)
    e.handle(LimitUpdated(EG, inactive()), after(T0 + 320))
    assert e.state is AUTONOMOUS


@pytest.mark.parametrize(("at", "state"), [(7199.0, FAILSAFE), (7200.0, AUTONOMOUS)])
def test_LPC_922_failsafe_to_unlimited_autonomous_when_fdm_elapsed(
    at: float, state: LpcState
) -> None:
    e, entry = in_failsafe()
    assert e.next_deadline == entry + 7200
    out = e.handle(Tick(), entry + at)
    assert e.state is state
    if state is AUTONOMOUS:
        assert changes(out) == [(FAILSAFE, AUTONOMOUS, "LPC-922")]
        assert publishes(out) == [Publish(AUTONOMOUS, None, None)]


def test_LPC_922_on_failsafe_expiry_stay_keeps_failsafe() -> None:
    e, entry = in_failsafe(LpcConfig(on_failsafe_expiry="stay"))
    assert e.next_deadline is None
    assert e.handle(Tick(), entry + 100_000) == []
    assert e.state is FAILSAFE


@pytest.mark.parametrize(("since", "state"), [(119.9, FAILSAFE), (120.0, AUTONOMOUS)])
def test_LPC_921_failsafe_to_unlimited_autonomous_120_s_after_first_returning_heartbeat(
    since: float, state: LpcState
) -> None:
    e, entry = in_failsafe()
    first = entry + 300
    e.handle(Heartbeat(EG), first)
    e.handle(Heartbeat(EG), first + 60)  # later heartbeats do not restart the 120 s
    assert e.next_deadline == first + 120
    out = e.handle(Tick(), first + since)
    assert e.state is state
    if state is AUTONOMOUS:
        assert changes(out) == [(FAILSAFE, AUTONOMOUS, "LPC-921")]
        assert publishes(out) == [Publish(AUTONOMOUS, None, None)]


@pytest.mark.parametrize(
    ("limit", "state", "published"),
    [(active(2000.0, 600.0), LIMITED, 2000.0), (inactive(), CONTROLLED, None)],
)
def test_LPC_916_failsafe_with_heartbeat_follows_a_new_limit(
    limit: SidecarLimit, state: LpcState, published: float | None
) -> None:
    e, entry = in_failsafe()
    e.handle(Heartbeat(EG), entry + 30)
    out = e.handle(LimitUpdated(EG, limit), entry + 40)
    assert changes(out) == [(FAILSAFE, state, "LPC-916")]
    end = entry + 640 if state is LIMITED else None
    assert publishes(out) == [Publish(state, published, end)]


def test_LPC_916_failsafe_ignores_limits_without_heartbeat() -> None:
    e, entry = in_failsafe(LpcConfig(approval_policy="permissive"))
    out = e.handle(LimitUpdated(EG, active(2000.0)), entry + 30)
    assert e.state is FAILSAFE
    assert publishes(out) == []
    # the ignored limit does not come back with the next heartbeat
    assert changes(e.handle(Heartbeat(EG), entry + 40)) == []
    assert e.state is FAILSAFE


@pytest.mark.parametrize("returns_at", [100.0, 7150.0])
def test_regression_the_two_failsafe_exits_by_time_are_independent(returns_at: float) -> None:
    """FDM counts from entry whatever the heartbeats do; LPC-921 counts from the first
    returning heartbeat whatever FDM does. The earlier one wins."""
    e, entry = in_failsafe()
    e.handle(Heartbeat(EG), entry + returns_at)  # then silence again
    expected_at = min(entry + 7200, entry + returns_at + 120)
    assert e.next_deadline == expected_at
    rule = "LPC-921" if returns_at + 120 < 7200 else "LPC-922"
    out = e.handle(Tick(), expected_at)
    assert changes(out) == [(FAILSAFE, AUTONOMOUS, rule)]


def test_LPC_921_recovery_still_applies_when_failsafe_expiry_is_stay() -> None:
    e, entry = in_failsafe(LpcConfig(on_failsafe_expiry="stay"))
    e.handle(Heartbeat(EG), entry + 9000)
    assert e.next_deadline == entry + 9120
    assert changes(e.handle(Tick(), entry + 9120)) == [(FAILSAFE, AUTONOMOUS, "LPC-921")]


def test_late_input_applies_chained_transitions_at_their_own_deadlines() -> None:
    """A runtime that wakes hours late still sees Limited -> Failsafe -> Unlimited/autonomous
    with Failsafe entered at the heartbeat deadline, and only one Publish."""
    e = in_limited()  # heartbeat at T0 + 10 -> Failsafe at after(T0 + 130), FDM 2 h later
    out = e.handle(Tick(), T0 + 130 + 7200.5)
    assert changes(out) == [(LIMITED, FAILSAFE, "LPC-911"), (FAILSAFE, AUTONOMOUS, "LPC-922")]
    assert publishes(out) == [Publish(AUTONOMOUS, None, None)]
    e2 = in_limited()
    e2.handle(Tick(), T0 + 130 + 7199.5)
    assert e2.state is FAILSAFE


def test_time_never_goes_back() -> None:
    e = in_limited()
    e.handle(Tick(), T0 + 100)
    e.handle(Heartbeat(EG), T0 + 50)  # an out-of-order now counts as T0 + 100
    assert e.next_deadline == after(T0 + 220)


# ============================================================ limit duration semantics


def test_a_limit_received_already_expired_counts_as_deactivated() -> None:
    e = engine()
    out = e.handle(LimitUpdated(EG, active(3000.0, -5.0)), T0 + 10)
    assert changes(out) == [(INIT, CONTROLLED, "LPC-902/905")]
    assert any("expired" in n.message for n in notes(out))
    e2 = in_limited()
    out = e2.handle(LimitUpdated(EG, active(1000.0, -1.0)), T0 + 20)
    assert changes(out) == [(LIMITED, CONTROLLED, "LPC-908/909")]


@pytest.mark.parametrize(
    "limit",
    [
        active(-1.0),
        active(math.nan),
        active(math.inf),
        inactive(math.nan),
        active(100.0, math.nan),
        active(100.0, math.inf),
    ],
    ids=["negative", "nan", "inf", "inactive-nan", "nan-duration", "inf-duration"],
)
def test_invalid_limit_values_read_from_the_sidecar_are_ignored(limit: SidecarLimit) -> None:
    e = in_limited()
    out = e.handle(LimitUpdated(EG, limit), T0 + 20)
    assert e.state is LIMITED
    assert publishes(out) == []
    assert [n.level for n in notes(out)] == ["warning"]


def test_current_sidecar_limit_reports_the_cs_view() -> None:
    e = engine()
    assert e.current_sidecar_limit(T0) == SidecarLimit(NOMINAL, False, 0.0, True)
    e.handle(LimitUpdated(EG, active(3000.0, 600.0)), T0 + 10)
    assert e.current_sidecar_limit(T0 + 110) == SidecarLimit(3000.0, True, 500.0, True)
    # ended by now (not yet ticked): reported as gone
    assert e.current_sidecar_limit(T0 + 610) == SidecarLimit(NOMINAL, False, 0.0, True)


@pytest.mark.parametrize(
    ("remaining", "new"), [(498.0, False), (499.0, False), (502.0, False), (503.0, True)]
)
def test_a_re_read_equal_to_the_current_view_is_not_a_new_limit(
    remaining: float, new: bool
) -> None:
    e = in_limited(duration_s=600.0)  # ends at T0 + 610; at T0 + 110, 500 s remain
    out = e.handle(LimitUpdated("", active(3000.0, remaining)), T0 + 110)
    assert e.state is LIMITED
    if new:
        assert publishes(out) == [Publish(LIMITED, 3000.0, T0 + 110 + remaining)]
    else:
        assert out == []


def test_a_re_read_in_init_of_the_cs_view_changes_nothing() -> None:
    e = engine()
    assert e.handle(LimitUpdated("", SidecarLimit(NOMINAL, False, 0.0)), T0 + 1) == []
    assert e.state is INIT
    assert e.status(T0 + 1).active_ski is None


# ============================================================ publication rules


def test_publication_none_for_heartbeats_approvals_idle_time_or_identical_data() -> None:
    e = in_limited()
    quiet: list[tuple[Input, float]] = [
        (Heartbeat(EG), T0 + 20),
        (WriteApprovalRequired(EG, ((1, active(500.0)),)), T0 + 21),
        (Tick(), T0 + 22),
        (LimitUpdated(EG, active(3000.0)), T0 + 23),  # the same limit again
        (UseCaseSupportUpdate(EG), T0 + 24),
        (Discovered(EG, True), T0 + 25),
    ]
    for event, at in quiet:
        assert publishes(e.handle(event, at)) == [], event


def test_publication_one_per_new_limit_value() -> None:
    e = in_limited()
    assert publishes(e.handle(LimitUpdated(EG, active(2000.0)), T0 + 20)) == [
        Publish(LIMITED, 2000.0, None)
    ]
    assert publishes(e.handle(LimitUpdated(EG, active(2000.0, 60.0)), T0 + 21)) == [
        Publish(LIMITED, 2000.0, T0 + 81)
    ]


def test_publication_one_per_state_change_even_between_two_unlimited_states() -> None:
    e = in_autonomous()
    e.handle(Heartbeat(EG), T0 + 130)
    out = e.handle(LimitUpdated(EG, inactive()), T0 + 131)
    assert publishes(out) == [Publish(CONTROLLED, None, None)]


@pytest.mark.parametrize("where", ["init", "failsafe"])
def test_publication_fcapl_change_in_init_or_failsafe_is_published_at_once(where: str) -> None:
    if where == "init":
        e, state, at = engine(), INIT, T0 + 10
    else:
        e, entry = in_failsafe()
        state, at = FAILSAFE, entry + 10
    out = e.handle(FailsafeLimitUpdated(EG, 1800.0), at)
    assert publishes(out) == [Publish(state, 1800.0, None)]
    assert of_type(out, PersistFailsafeValues) == [
        PersistFailsafeValues(FailsafeValues(1800.0, 7200.0))
    ]


def test_publication_fcapl_change_while_limited_publishes_nothing() -> None:
    e = in_limited()
    out = e.handle(FailsafeLimitUpdated(EG, 1800.0), T0 + 20)
    assert publishes(out) == []
    assert e.failsafe_values.limit_W == 1800.0


def test_publication_at_most_one_per_input() -> None:
    e = in_limited(duration_s=30.0)  # expiry at T0 + 40, Failsafe at after(T0 + 130)
    out = e.handle(Tick(), T0 + 200)
    assert changes(out) == [(LIMITED, CONTROLLED, "LPC-908/909"), (CONTROLLED, FAILSAFE, "LPC-912")]
    assert publishes(out) == [Publish(FAILSAFE, FCAPL, None)]


def test_next_deadline_is_never_in_the_past_after_handle() -> None:
    e = in_limited(duration_s=30.0)
    for at in (T0 + 20, T0 + 40, T0 + 131, T0 + 5000, T0 + 9000):
        e.handle(Tick(), at)
        deadline = e.next_deadline
        assert deadline is None or deadline > at


# ============================================================ write approval


@pytest.mark.parametrize("value", [-1.0, -0.0001, math.nan, math.inf, -math.inf])
def test_LPC_001_deny_negative_nan_or_infinite_limits(value: float) -> None:
    e = in_controlled()
    out = e.handle(WriteApprovalRequired(EG, ((7, active(value)),)), T0 + 20)
    assert len(out) == 1
    answer = out[0]
    assert isinstance(answer, Answer)
    assert (answer.msg_counter, answer.approve) == (7, False)
    assert answer.reason.startswith(LPC_001_REASON)
    assert LPC_001_REASON == "LPC-001: Active Power Consumption Limit must be >= 0 W"


@pytest.mark.parametrize("value", [0.0, 4200.0, NOMINAL + 1, 1e12])
def test_limits_of_zero_and_above_nominal_max_are_approved(value: float) -> None:
    e = in_controlled()
    out = e.handle(WriteApprovalRequired(EG, ((1, active(value, 60.0)),)), T0 + 20)
    assert out == [Answer(1, True, "")]


def _gated_engine(state: LpcState) -> tuple[LpcEngine, float]:
    """An engine in a gated state with its last heartbeat at the returned time."""
    if state is INIT:
        e = engine()
        e.handle(Heartbeat(EG), T0 + 10)
        return e, T0 + 10
    if state is AUTONOMOUS:
        e = in_autonomous()
        e.handle(Heartbeat(EG), T0 + 200)
        return e, T0 + 200
    e, entry = in_failsafe()
    e.handle(Heartbeat(EG), entry + 10)
    return e, entry + 10


@pytest.mark.parametrize("state", [INIT, FAILSAFE, AUTONOMOUS])
@pytest.mark.parametrize(
    ("since", "approve"), [(0.0, True), (59.0, True), (60.0, True), (60.5, False)]
)
def test_LPC_TS_036_037_writes_in_init_failsafe_autonomous_need_a_heartbeat_within_60_s(
    state: LpcState, since: float, approve: bool
) -> None:
    e, heartbeat_at = _gated_engine(state)
    assert e.state is state
    out = e.handle(WriteApprovalRequired(EG, ((3, active(1000.0)),)), heartbeat_at + since)
    [answer] = answers(out)
    assert answer.approve is approve
    if not approve:
        assert "LPC-TS-036/037" in answer.reason


@pytest.mark.parametrize("state", [LIMITED, CONTROLLED])
def test_LPC_TS_036_037_writes_in_limited_or_controlled_need_no_recent_heartbeat(
    state: LpcState,
) -> None:
    e = in_limited() if state is LIMITED else in_controlled()
    out = e.handle(WriteApprovalRequired(EG, ((3, active(1000.0)),)), T0 + 129)
    assert out == [Answer(3, True, "")]


def test_LPC_TS_036_037_connection_time_heartbeat_opens_the_window() -> None:
    """The sidecar reads the EG's first heartbeat at connection and makes no event for it."""
    e = engine()
    e.handle(UseCaseSupportUpdate(EG), T0 + 5)
    assert e.needs_sidecar_heartbeat_check(T0 + 10)
    out = e.handle(WriteApprovalRequired(EG, ((1, active(1000.0)),), True), T0 + 10)
    assert out == [Answer(1, True, "")]
    assert e.status(T0 + 10).last_heartbeat_age_s == 5.0
    # it also counts as the last heartbeat for the timeout rules
    e.handle(LimitUpdated(EG, active(1000.0)), T0 + 11)
    assert e.next_deadline == after(T0 + 125)


@pytest.mark.parametrize(
    ("support_update_at", "sidecar_says", "approve"),
    [
        (T0 + 5, True, True),
        (T0 + 5, False, False),
        (T0 + 5, None, False),
        (T0 + 1, True, True),  # exactly 60 s before the write: still inside
        (None, True, False),
    ],
)
def test_LPC_TS_036_037_connection_time_heartbeat_rules(
    support_update_at: float | None, sidecar_says: bool | None, approve: bool
) -> None:
    e = engine()
    if support_update_at is not None:
        e.handle(UseCaseSupportUpdate(EG), support_update_at)
    out = e.handle(WriteApprovalRequired(EG, ((1, active(1000.0)),), sidecar_says), T0 + 61)
    assert [a.approve for a in answers(out)] == [approve]


def test_LPC_TS_036_037_connection_time_heartbeat_older_than_the_window_does_not_count() -> None:
    e = engine()
    e.handle(UseCaseSupportUpdate(EG), T0 + 5)
    assert not e.needs_sidecar_heartbeat_check(T0 + 65.5)
    out = e.handle(WriteApprovalRequired(EG, ((1, active(1000.0)),), True), T0 + 65.5)
    assert [a.approve for a in answers(out)] == [False]


def test_LPC_TS_036_037_connection_time_heartbeat_of_another_eg_does_not_count() -> None:
    e = engine()
    e.handle(UseCaseSupportUpdate(EG2), T0 + 5)
    out = e.handle(WriteApprovalRequired(EG, ((1, active(1000.0)),), True), T0 + 10)
    assert [a.approve for a in answers(out)] == [False]


def test_LPC_921_connection_time_heartbeat_starts_failsafe_recovery() -> None:
    e, entry = in_failsafe()
    e.handle(UseCaseSupportUpdate(EG), entry + 100)
    out = e.handle(WriteApprovalRequired(EG, ((1, active(1000.0)),), True), entry + 110)
    assert out == [Answer(1, True, "")]
    assert e.next_deadline == entry + 220


def test_needs_sidecar_heartbeat_check() -> None:
    e = engine()
    assert not e.needs_sidecar_heartbeat_check(T0 + 1)  # no EG connected: no use asking
    e.handle(UseCaseSupportUpdate(EG), T0 + 1)
    assert e.needs_sidecar_heartbeat_check(T0 + 2)
    e.handle(Heartbeat(EG), T0 + 3)
    assert not e.needs_sidecar_heartbeat_check(T0 + 4)  # a heartbeat event is recent
    e.handle(LimitUpdated(EG, inactive()), T0 + 5)
    e.handle(UseCaseSupportUpdate(EG), T0 + 100)
    assert not e.needs_sidecar_heartbeat_check(T0 + 101)  # Unlimited/controlled: no gate
    # a due Failsafe transition is taken into account before the runtime ticks
    assert e.needs_sidecar_heartbeat_check(T0 + 130)
    permissive = engine(LpcConfig(approval_policy="permissive"))
    permissive.handle(UseCaseSupportUpdate(EG), T0 + 1)
    assert not permissive.needs_sidecar_heartbeat_check(T0 + 2)


@pytest.mark.parametrize("state", [INIT, FAILSAFE, AUTONOMOUS])
def test_permissive_policy_approves_every_valid_value_without_heartbeats(state: LpcState) -> None:
    lpc = LpcConfig(approval_policy="permissive")
    if state is INIT:
        e = engine(lpc)
    elif state is AUTONOMOUS:
        e = in_autonomous(lpc)
    else:
        e, _ = in_failsafe(lpc)
    out = e.handle(
        WriteApprovalRequired(EG, ((1, active(1000.0)), (2, active(-5.0)))), T0 + 100_000
    )
    assert [(a.msg_counter, a.approve) for a in answers(out)] == [(1, True), (2, False)]


def test_writes_from_a_non_active_eg_are_denied() -> None:
    e = in_limited()
    out = e.handle(WriteApprovalRequired(EG2, ((4, active(1000.0)), (5, active(1.0)))), T0 + 20)
    assert [(a.msg_counter, a.approve) for a in answers(out)] == [(4, False), (5, False)]
    assert all(EG in a.reason and "active energy guard" in a.reason for a in answers(out))


def test_writes_with_an_invalid_ski_are_denied() -> None:
    e = in_limited()
    out = e.handle(WriteApprovalRequired("not-a-ski", ((4, active(1000.0)),)), T0 + 20)
    assert [(a.msg_counter, a.approve) for a in answers(out)] == [(4, False)]


def test_every_pending_entry_gets_exactly_one_answer() -> None:
    e = engine()
    e.handle(Heartbeat(EG), T0 + 1)
    pending = tuple(
        (n, active(v)) for n, v in enumerate([1.0, -1.0, math.nan, 0.0, 5e5, math.inf], 100)
    )
    out = e.handle(WriteApprovalRequired(EG, pending), T0 + 2)
    assert [(a.msg_counter, a.approve) for a in answers(out)] == [
        (100, True),
        (101, False),
        (102, False),
        (103, True),
        (104, True),
        (105, False),
    ]
    assert e.handle(WriteApprovalRequired(EG, ()), T0 + 3) == []


# ============================================================ failsafe values


@pytest.mark.parametrize(
    ("rule", "written", "accepted"),
    [
        ("LPC-022/1", FDM_MIN_S, FDM_MIN_S),
        ("LPC-022/2", FDM_MAX_S, FDM_MAX_S),
        ("LPC-022/2", 5 * 3600.0, 5 * 3600.0),
        ("LPC-022/3", FDM_MIN_S - 1, None),
        ("LPC-022/3", 0.0, None),
        ("LPC-022/3", -7200.0, None),
        ("LPC-022/4", FDM_MAX_S + 1, None),
        ("LPC-022/4", math.inf, None),
        ("LPC-022/4", math.nan, None),
    ],
)
def test_LPC_022_1_to_4_failsafe_duration_range(
    rule: str, written: float, accepted: float | None
) -> None:
    e = engine(LpcConfig(failsafe_duration_s=3 * 3600.0))
    out = e.handle(FailsafeDurationUpdated(EG, written), T0 + 1)
    if accepted is None:
        assert e.failsafe_values.duration_s == 3 * 3600.0, rule
        assert of_type(out, WriteBackFailsafeDuration) == [WriteBackFailsafeDuration(3 * 3600.0)]
        assert of_type(out, PersistFailsafeValues) == []
        assert [n.level for n in notes(out)] == ["warning"]
    else:
        assert e.failsafe_values.duration_s == accepted, rule
        assert of_type(out, WriteBackFailsafeDuration) == []
        assert of_type(out, PersistFailsafeValues) == [
            PersistFailsafeValues(FailsafeValues(FCAPL, accepted))
        ]
    assert publishes(out) == []


@pytest.mark.parametrize("written", [12 * 3600.0 + 1, FDM_MAX_S])
def test_LPC_022_5_failsafe_duration_above_device_maximum_is_clamped_and_written_back(
    written: float,
) -> None:
    e = engine(LpcConfig(failsafe_duration_max_s=12 * 3600.0))
    out = e.handle(FailsafeDurationUpdated(EG, written), T0 + 1)
    assert e.failsafe_values.duration_s == 12 * 3600.0
    assert of_type(out, WriteBackFailsafeDuration) == [WriteBackFailsafeDuration(12 * 3600.0)]
    assert of_type(out, PersistFailsafeValues) == [
        PersistFailsafeValues(FailsafeValues(FCAPL, 12 * 3600.0))
    ]
    # clamped to the value already held: written back again, nothing new to persist
    out = e.handle(FailsafeDurationUpdated(EG, written), T0 + 2)
    assert of_type(out, WriteBackFailsafeDuration) == [WriteBackFailsafeDuration(12 * 3600.0)]
    assert of_type(out, PersistFailsafeValues) == []


@pytest.mark.parametrize("written", [-1.0, math.nan, math.inf, -math.inf])
def test_invalid_failsafe_limit_keeps_the_previous_value_and_writes_it_back(
    written: float,
) -> None:
    e = engine()
    out = e.handle(FailsafeLimitUpdated(EG, written), T0 + 1)
    assert e.failsafe_values.limit_W == FCAPL
    assert of_type(out, WriteBackFailsafeLimit) == [WriteBackFailsafeLimit(FCAPL)]
    assert of_type(out, PersistFailsafeValues) == []
    assert publishes(out) == []


def test_failsafe_values_unchanged_are_neither_persisted_nor_written_back() -> None:
    e = engine()
    assert e.handle(FailsafeLimitUpdated(EG, FCAPL), T0 + 1) == []
    assert e.handle(FailsafeDurationUpdated(EG, 7200.0), T0 + 2) == []
    assert e.handle(FailsafeLimitUpdated(EG, 0.0), T0 + 3) == [
        PersistFailsafeValues(FailsafeValues(0.0, 7200.0)),
        Publish(INIT, 0.0, None),
    ]


def test_failsafe_values_from_a_non_active_eg_are_written_back() -> None:
    e = in_limited()
    out = e.handle(FailsafeLimitUpdated(EG2, 10.0), T0 + 20)
    assert of_type(out, WriteBackFailsafeLimit) == [WriteBackFailsafeLimit(FCAPL)]
    out = e.handle(FailsafeDurationUpdated(EG2, 9000.0), T0 + 21)
    assert of_type(out, WriteBackFailsafeDuration) == [WriteBackFailsafeDuration(7200.0)]
    assert e.failsafe_values == FailsafeValues(FCAPL, 7200.0)


def test_LPC_922_a_new_fdm_applies_to_the_current_failsafe() -> None:
    e, entry = in_failsafe()
    e.handle(FailsafeDurationUpdated("", 3 * 3600.0), entry + 10)
    assert e.next_deadline == entry + 3 * 3600.0


def test_LPC_922_a_shorter_fdm_that_already_elapsed_ends_failsafe_at_once() -> None:
    e, entry = in_failsafe(LpcConfig(failsafe_duration_s=4 * 3600.0))
    out = e.handle(FailsafeDurationUpdated("", FDM_MIN_S), entry + 3 * 3600.0)
    assert changes(out) == [(FAILSAFE, AUTONOMOUS, "LPC-922")]
    assert publishes(out) == [Publish(AUTONOMOUS, None, None)]
    assert e.next_deadline is None


# ============================================================ restore at Start [LPC-TS-044]


def test_LPC_TS_044_persisted_failsafe_values_are_restored_at_start() -> None:
    e = LpcEngine(LpcConfig())
    out = e.handle(Start(FailsafeValues(1500.0, 4 * 3600.0)), T0)
    assert out == [Publish(INIT, 1500.0, None)]
    assert e.failsafe_values == FailsafeValues(1500.0, 4 * 3600.0)
    e.handle(UseCaseSupportUpdate(EG), T0 + 1)
    assert e.handle(UseCaseSupportUpdate(EG), T0 + 2) == [
        SendLocalData(NOMINAL, SidecarLimit(NOMINAL, False, 0.0, True), e.failsafe_values)
    ]


@pytest.mark.parametrize(
    ("stored", "restored"),
    [
        (FailsafeValues(math.nan, 4 * 3600.0), FailsafeValues(FCAPL, 4 * 3600.0)),
        (FailsafeValues(-5.0, 4 * 3600.0), FailsafeValues(FCAPL, 4 * 3600.0)),
        (FailsafeValues(1500.0, 60.0), FailsafeValues(1500.0, 7200.0)),
        (FailsafeValues(1500.0, math.inf), FailsafeValues(1500.0, 7200.0)),
        (FailsafeValues(1500.0, 20 * 3600.0), FailsafeValues(1500.0, 12 * 3600.0)),
    ],
)
def test_LPC_TS_044_invalid_persisted_values_fall_back_with_a_note(
    stored: FailsafeValues, restored: FailsafeValues
) -> None:
    e = LpcEngine(LpcConfig(failsafe_duration_max_s=12 * 3600.0))
    out = e.handle(Start(stored), T0)
    assert e.failsafe_values == restored
    assert [n.level for n in notes(out)] == ["warning"]
    assert publishes(out) == [Publish(INIT, restored.limit_W, None)]


# ============================================================ which EG is in charge, SKIs


def test_the_first_data_event_claims_the_active_eg_and_others_are_ignored() -> None:
    e = engine()
    e.handle(UseCaseSupportUpdate(EG2), T0 + 1)  # not a data event: claims nothing
    assert e.status(T0 + 1).active_ski is None
    e.handle(Heartbeat(EG_SPELLED), T0 + 2)  # any spelling of the SKI
    assert e.status(T0 + 2).active_ski == EG
    out = e.handle(LimitUpdated(EG2, active(100.0)), T0 + 3)
    assert e.state is INIT
    assert [n.level for n in notes(out)] == ["info"]
    e.handle(LimitUpdated(EG, inactive()), T0 + 4)
    # EG2's heartbeats do not keep EG's control alive
    for t in range(10, 200, 30):
        e.handle(Heartbeat(EG2), T0 + t)
    assert e.state is FAILSAFE
    # Failsafe cleared the active EG: now EG2 may take over
    e.handle(Heartbeat(EG2), T0 + 200)
    assert e.status(T0 + 200).active_ski == EG2
    out = e.handle(LimitUpdated(EG2, active(900.0)), T0 + 201)
    assert changes(out) == [(FAILSAFE, LIMITED, "LPC-916")]


def test_a_re_read_counts_for_the_active_eg_without_claiming() -> None:
    e = in_controlled()
    out = e.handle(LimitUpdated("", active(800.0)), T0 + 20)
    assert changes(out) == [(CONTROLLED, LIMITED, "LPC-910")]
    assert e.status(T0 + 20).active_ski == EG


@pytest.mark.parametrize("ski", ["", "xyz", "0" * 39, "g" * 40, "0" * 41])
def test_invalid_skis_are_ignored_with_a_note(ski: str) -> None:
    e = in_limited()
    for event in (Heartbeat(ski), UseCaseSupportUpdate(ski), Discovered(ski, False), Removed(ski)):
        out = e.handle(event, T0 + 20)
        assert [type(d) for d in out] == [Note], event
    assert e.next_deadline == after(T0 + 130)  # the bad heartbeat did not count


@pytest.mark.parametrize("listed", [EG, EG_SPELLED, EG.upper()])
def test_discovered_untrusted_eg_on_the_allowlist_is_registered_normalised(listed: str) -> None:
    e = engine(ems_ski_allowlist=[listed])
    assert e.handle(Discovered(EG_SPELLED, False), T0 + 1) == [RegisterSki(EG)]
    assert e.handle(Discovered(EG, True), T0 + 2) == []  # already trusted


def test_discovered_unknown_eg_is_ignored_unless_accept_unknown_ems() -> None:
    strict = engine(ems_ski_allowlist=[EG])
    out = strict.handle(Discovered(EG2, False), T0 + 1)
    assert of_type(out, RegisterSki) == []
    assert len(notes(out)) == 1
    loose = engine(accept_unknown_ems=True)
    out = loose.handle(Discovered(EG2, False), T0 + 1)
    assert of_type(out, RegisterSki) == [RegisterSki(EG2)]
    [note] = notes(out)
    assert note.level == "warning"
    assert "accept_unknown_ems" in note.message


def test_an_invalid_allowlist_entry_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="SKI"):
        LpcEngine(LpcConfig(), ems_ski_allowlist=["abc"])


def test_removed_eg_connection_time_heartbeat_no_longer_counts() -> None:
    e = engine()
    e.handle(UseCaseSupportUpdate(EG), T0 + 1)
    e.handle(Removed(EG_SPELLED), T0 + 2)
    assert not e.needs_sidecar_heartbeat_check(T0 + 3)


# ============================================================ UseCaseSupportUpdate, status


def test_use_case_support_update_resends_the_local_data() -> None:
    e = in_limited(duration_s=600.0)
    out = e.handle(UseCaseSupportUpdate(EG_SPELLED), T0 + 110)
    assert out == [
        SendLocalData(
            NOMINAL, SidecarLimit(3000.0, True, 500.0, True), FailsafeValues(FCAPL, 7200.0)
        )
    ]


def test_status_snapshot() -> None:
    e = in_limited(duration_s=600.0)
    status = e.status(T0 + 40)
    assert (status.state, status.limit_W, status.end) == (LIMITED, 3000.0, T0 + 610)
    assert status.failsafe == FailsafeValues(FCAPL, 7200.0)
    assert status.last_heartbeat_age_s == 30.0
    assert status.active_ski == EG
    assert status.next_deadline == after(T0 + 130)
    assert engine().status(T0).last_heartbeat_age_s is None


def test_shortened_timing_for_simulations() -> None:
    timing = LpcTiming(
        heartbeat_timeout_s=2.0, init_timeout_s=1.0, failsafe_recovery_s=3.0, write_window_s=1.0
    )
    e = engine(LpcConfig(timing=timing))
    assert e.next_deadline == after(T0 + 1)
    e.handle(Heartbeat(EG), T0 + 0.5)
    e.handle(LimitUpdated(EG, inactive()), T0 + 0.6)
    assert e.next_deadline == after(T0 + 2.5)


def _replay(events: Sequence[tuple[Input, float]]) -> list[list[Decision]]:
    e = engine()
    return [e.handle(event, at) for event, at in events]


def test_same_inputs_give_the_same_outputs() -> None:
    events: list[tuple[Input, float]] = [
        (UseCaseSupportUpdate(EG), T0 + 1),
        (WriteApprovalRequired(EG, ((1, active(10.0, 5.0)),), True), T0 + 2),
        (LimitUpdated(EG, active(10.0, 5.0)), T0 + 3),
        (Tick(), T0 + 8),
        (Tick(), T0 + 500),
    ]
    first = _replay(events)
    assert first == _replay(events)
    # the connection-time heartbeat at T0 + 1 set the heartbeat deadline
    assert changes(first[-1]) == [(CONTROLLED, FAILSAFE, "LPC-912")]
    assert attrs.asdict(publishes(first[-1])[0]) == {
        "state": FAILSAFE,
        "limit_W": FCAPL,
        "end": None,
    }


def test_a_write_of_unknown_source_uses_any_recent_connection_time_heartbeat() -> None:
    """Pending writes re-read after a reconnect (SKI "") while no EG is active."""
    e = engine()
    e.handle(UseCaseSupportUpdate(EG), T0 + 5)
    out = e.handle(WriteApprovalRequired("", ((1, active(1000.0)),), True), T0 + 10)
    assert out == [Answer(1, True, "")]
    assert e.status(T0 + 10).active_ski is None  # an unknown source claims nothing


@pytest.mark.parametrize(
    "lpc",
    [
        LpcConfig(failsafe_limit_W=math.nan),
        LpcConfig(failsafe_limit_W=-1.0),
        LpcConfig(failsafe_duration_s=0.0),
    ],
)
def test_an_unusable_configuration_is_a_programming_error(lpc: LpcConfig) -> None:
    with pytest.raises(ValueError, match="failsafe"):
        LpcEngine(lpc)


def _just_after(e: LpcEngine, at: float) -> tuple[LpcEngine, float]:
    return e, at + 1.0


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda: (engine(), T0 + 1), False),  # no active EG yet
        (lambda: (in_limited(), T0 + 20), True),
        (lambda: (in_controlled(), T0 + 20), True),
        (lambda: _just_after(*in_failsafe()), False),  # another EG may take over
        (lambda: (in_autonomous(), T0 + 200), False),
    ],
)
def test_refuses_data_from_another_eg_only_while_the_active_one_is_kept(
    make: Callable[[], tuple[LpcEngine, float]], refused: bool
) -> None:
    """Issue 13 item 2: the runtime drops such events before reading their values."""
    e, now = make()
    assert e.refuses_data_from(EG2, now) is refused
    assert e.refuses_data_from(EG_SPELLED, now) is False  # the active EG itself (or none)


def test_refuses_data_from_nobody_once_a_transition_that_clears_the_active_eg_is_due() -> None:
    e = in_limited()
    deadline = e.next_deadline
    assert deadline is not None
    assert e.refuses_data_from(EG2, deadline - 1.0)
    # The heartbeat timeout is due but not yet applied: Failsafe may clear the active EG first.
    assert not e.refuses_data_from(EG2, deadline)


def test_an_approved_write_not_yet_read_back_is_never_overwritten_by_a_resend() -> None:
    """The local data re-sent on UseCaseSupportUpdate must not carry a view older than a write
    the engine approved: the sidecar already holds the EG's value (found by the soak)."""
    e = in_controlled(at=T0 + 10)
    assert e.limit_to_resend(T0 + 11) == e.current_sidecar_limit(T0 + 11)
    [answer] = answers(e.handle(WriteApprovalRequired(EG, ((3, active(2000.0)),)), T0 + 12))
    assert answer.approve
    assert e.limit_to_resend(T0 + 12.5) is None  # the sidecar holds the newer value
    e.handle(LimitUpdated(EG, active(2000.0)), T0 + 13)  # read back: the view has it now
    assert e.limit_to_resend(T0 + 13) == active(2000.0)
    # A write approved but never reported (the sidecar rejected it after all) blocks no re-send
    # for longer than the approval deadline.
    e.handle(WriteApprovalRequired(EG, ((4, active(1000.0)),)), T0 + 20)
    assert e.limit_to_resend(T0 + 29.9) is None
    assert e.limit_to_resend(T0 + 30.0) == active(2000.0)
    # A denied write changes nothing in the sidecar: the view is re-sent as it is.
    e.handle(WriteApprovalRequired(EG, ((5, active(-1.0)),)), T0 + 40)
    assert e.limit_to_resend(T0 + 40) == active(2000.0)
