"""ExternalLimits translation (spec/everest.md): the exact objects EVerest's own module sends."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eebus_bridge.config import LpcConfig
from eebus_bridge.lpc import (
    Heartbeat,
    LimitUpdated,
    LpcEngine,
    LpcState,
    Publish,
    SidecarLimit,
    Start,
    Tick,
    format_timestamp,
    to_external_limits,
)

NOW = datetime(2026, 5, 7, 10, 0, 0, tzinfo=UTC)
EG = "0123456789abcdef0123456789abcdef01234567"


def _leaf(value: float) -> dict[str, object]:
    return {"total_power_W": {"value": value, "source": "EEBUS LPC"}}


def test_unlimited_is_one_entry_with_empty_limits() -> None:
    assert to_external_limits(None, None, NOW) == {
        "schedule_import": [
            {"timestamp": "2026-05-07T10:00:00.000Z", "limits_to_root": {}, "limits_to_leaves": {}}
        ],
        "schedule_export": [],
        "schedule_setpoints": [],
    }


def test_unlimited_ignores_an_end() -> None:
    assert to_external_limits(None, NOW + timedelta(hours=1), NOW) == to_external_limits(
        None, None, NOW
    )


def test_active_limit_without_duration_and_init_or_failsafe_fcapl() -> None:
    assert to_external_limits(4200.0, None, NOW) == {
        "schedule_import": [
            {
                "timestamp": "2026-05-07T10:00:00.000Z",
                "limits_to_root": _leaf(4200.0),
                "limits_to_leaves": _leaf(4200.0),
            }
        ],
        "schedule_export": [],
        "schedule_setpoints": [],
    }


def test_active_limit_with_duration_ends_with_an_empty_entry() -> None:
    end = NOW + timedelta(hours=1, minutes=2, seconds=3)
    assert to_external_limits(100.0, end, NOW) == {
        "schedule_import": [
            {
                "timestamp": "2026-05-07T10:00:00.000Z",
                "limits_to_root": _leaf(100.0),
                "limits_to_leaves": _leaf(100.0),
            },
            {"timestamp": "2026-05-07T11:02:03.000Z", "limits_to_root": {}, "limits_to_leaves": {}},
        ],
        "schedule_export": [],
        "schedule_setpoints": [],
    }


def test_zero_watts_is_a_limit_not_unlimited() -> None:
    entry = to_external_limits(0.0, None, NOW)["schedule_import"][0]
    assert entry["limits_to_root"] == _leaf(0.0)


def test_result_is_plain_json_and_leaves_are_not_shared() -> None:
    limits = to_external_limits(1000.0, NOW + timedelta(seconds=5), NOW)
    assert json.loads(json.dumps(limits)) == limits
    entry = limits["schedule_import"][0]
    assert entry["limits_to_root"] is not entry["limits_to_leaves"]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_invalid_limit_values_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="limit"):
        to_external_limits(bad, None, NOW)


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2026, 5, 7, 10, 0, 0, tzinfo=UTC), "2026-05-07T10:00:00.000Z"),
        (datetime(2026, 5, 7, 10, 0, 0, 123999, tzinfo=UTC), "2026-05-07T10:00:00.123Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC), "2026-01-02T03:04:05.006Z"),
        (
            datetime(2026, 5, 7, 12, 0, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-05-07T10:00:00.000Z",
        ),
        (
            datetime(2026, 1, 1, 0, 30, 0, tzinfo=timezone(timedelta(hours=1))),
            "2025-12-31T23:30:00.000Z",
        ),
    ],
)
def test_timestamps_are_rfc3339_utc_with_milliseconds_and_z(dt: datetime, text: str) -> None:
    assert format_timestamp(dt) == text


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2026, 5, 7, 10, 0, 0))
    with pytest.raises(ValueError, match="naive"):
        to_external_limits(None, None, datetime(2026, 5, 7, 10, 0, 0))
    with pytest.raises(ValueError, match="naive"):
        to_external_limits(5.0, datetime(2026, 5, 7, 11, 0, 0), NOW)


def _engine_publication(state: LpcState) -> tuple[Publish, float]:
    """The last Publish of an engine driven into state, and the monotonic time it came at."""
    engine = LpcEngine(LpcConfig(failsafe_limit_W=4200.0))
    out = engine.handle(Start(), 0.0)
    at = 10.0
    engine.handle(Heartbeat(EG), at)
    if state is LpcState.LIMITED:
        out = engine.handle(LimitUpdated(EG, SidecarLimit(1500.0, True, 900.0)), at)
    elif state is LpcState.UNLIMITED_CONTROLLED:
        out = engine.handle(LimitUpdated(EG, SidecarLimit(1500.0, False, 0.0)), at)
    elif state is LpcState.FAILSAFE:
        engine.handle(LimitUpdated(EG, SidecarLimit(1500.0, False, 0.0)), at)
        at = 200.0
        out = engine.handle(Tick(), at)
    elif state is LpcState.UNLIMITED_AUTONOMOUS:
        at = 200.0
        out = engine.handle(Tick(), at)
    assert engine.state is state
    [publication] = [d for d in out if isinstance(d, Publish)]
    return publication, at


EMPTY: dict[str, Any] = {"limits_to_root": {}, "limits_to_leaves": {}}
FCAPL_ENTRY: dict[str, Any] = {"limits_to_root": _leaf(4200.0), "limits_to_leaves": _leaf(4200.0)}


@pytest.mark.parametrize(
    ("state", "schedule"),
    [
        (LpcState.INIT, [FCAPL_ENTRY]),
        (LpcState.FAILSAFE, [FCAPL_ENTRY]),
        (
            LpcState.LIMITED,
            [
                {"limits_to_root": _leaf(1500.0), "limits_to_leaves": _leaf(1500.0)},
                {"timestamp": "2026-05-07T10:15:00.000Z", **EMPTY},
            ],
        ),
        (LpcState.UNLIMITED_CONTROLLED, [EMPTY]),
        (LpcState.UNLIMITED_AUTONOMOUS, [EMPTY]),
    ],
)
def test_each_state_maps_to_the_exact_external_limits(
    state: LpcState, schedule: list[dict[str, Any]]
) -> None:
    """Publish -> ExternalLimits as the runtime does it: monotonic end to wall clock."""
    publication, at = _engine_publication(state)
    end = None if publication.end is None else NOW + timedelta(seconds=publication.end - at)
    limits = to_external_limits(publication.limit_W, end, NOW)
    expected = [{"timestamp": "2026-05-07T10:00:00.000Z", **schedule[0]}, *schedule[1:]]
    assert limits == {
        "schedule_import": expected,
        "schedule_export": [],
        "schedule_setpoints": [],
    }
