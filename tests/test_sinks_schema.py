"""The ExternalLimits JSON Schema every EVerest-bound payload is checked against."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import jsonschema
import pytest

from eebus_bridge.sinks.external_limits import (
    encode_external_limits,
    external_limits_problems,
    external_limits_schema,
)
from tests._publications import NOW_TEXT, SOURCE, failsafe, limited, limited_for, unlimited


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(external_limits_schema())


@pytest.mark.parametrize(
    "limits",
    [
        limited(4200.0).external_limits,
        limited_for(3000.0, timedelta(hours=1)).external_limits,
        unlimited().external_limits,
        failsafe(0.0).external_limits,
    ],
    ids=["limited", "limited-with-duration", "unlimited", "failsafe-zero"],
)
def test_the_spec_shapes_are_valid(limits: dict[str, Any]) -> None:
    assert external_limits_problems(limits) == []
    encoded = encode_external_limits(limits)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == limits


def test_every_optional_field_of_the_spec_is_accepted() -> None:
    full_limits = {
        "total_power_W": {"value": 11000, "source": SOURCE},
        "ac_max_current_A": {"value": 16.0, "source": SOURCE},
        "ac_min_current_A": {"value": 6.0, "source": SOURCE},
        "ac_max_phase_count": {"value": 3, "source": SOURCE},
        "ac_min_phase_count": {"value": 1, "source": SOURCE},
        "ac_supports_changing_phases_during_charging": True,
        "ac_number_of_active_phases": 3,
    }
    entry = {
        "timestamp": NOW_TEXT,
        "limits_to_root": full_limits,
        "limits_to_leaves": {},
        "conversion_efficiency": 0.95,
        "price_per_kwh": {"timestamp": NOW_TEXT, "value": 0.3, "currency": "EUR"},
    }
    limits = {"schedule_import": [entry], "schedule_export": [entry], "schedule_setpoints": []}
    assert external_limits_problems(limits) == []


def _with(change: str, value: Any) -> dict[str, Any]:
    limits = copy.deepcopy(limited(4200.0).external_limits)
    entry = limits["schedule_import"][0]
    if change == "drop-top":
        del limits[value]
    elif change == "top":
        limits[value[0]] = value[1]
    elif change == "entry":
        entry[value[0]] = value[1]
    elif change == "drop-entry":
        del entry[value]
    elif change == "root":
        entry["limits_to_root"][value[0]] = value[1]
    return limits


@pytest.mark.parametrize(
    ("limits", "where"),
    [
        (_with("drop-top", "schedule_setpoints"), "schedule_setpoints"),
        (_with("top", ("schedule_extra", [])), "schedule_extra"),
        (_with("drop-entry", "limits_to_leaves"), "limits_to_leaves"),
        (_with("entry", ("comment", "x")), "comment"),
        (_with("entry", ("timestamp", "2026-05-07T12:00:00.000+02:00")), "timestamp"),
        (_with("entry", ("timestamp", "2026-05-07T10:00:00Z")), "timestamp"),
        (_with("entry", ("conversion_efficiency", 1.5)), "conversion_efficiency"),
        (_with("root", ("total_power_W", {"value": -1, "source": SOURCE})), "total_power_W"),
        (_with("root", ("total_power_W", {"value": 1})), "total_power_W"),
        (_with("root", ("total_power_W", {"value": 1, "source": SOURCE, "x": 1})), "total_power_W"),
        (_with("root", ("total_power_W", 4200)), "total_power_W"),
        (_with("root", ("max_power_W", {"value": 1, "source": SOURCE})), "max_power_W"),
        (_with("root", ("ac_max_phase_count", {"value": 2.5, "source": SOURCE})), "phase_count"),
        (_with("root", ("ac_number_of_active_phases", 4)), "ac_number_of_active_phases"),
        (_with("root", ("ac_supports_changing_phases_during_charging", 1)), "ac_supports"),
    ],
)
def test_violations_are_reported_with_their_path(limits: dict[str, Any], where: str) -> None:
    problems = external_limits_problems(limits)
    assert problems
    assert any(where in problem for problem in problems), problems
    assert encode_external_limits(limits) == problems


def test_nan_and_infinity_are_not_encoded() -> None:
    for bad in (float("nan"), float("inf")):
        limits = _with("root", ("total_power_W", {"value": bad, "source": SOURCE}))
        result = encode_external_limits(limits)
        assert isinstance(result, list)
        assert result
