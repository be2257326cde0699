"""Scenarios: who the simulated energy guard (EG) is and what it does when.

A scenario is a TOML file (presets live in tools/scenarios/, selected by name). Every time
offset in it (connect delay, heartbeat period, action times) is multiplied by `time_scale`,
so a test can run the `controlbox` preset in a fraction of its real duration without
changing the values the EG writes (a 3723 s limit stays 3723 s).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from eebus_bridge.ski import is_valid_ski, normalize_ski

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

ACTION_NAMES = (
    "send_limit",
    "write_failsafe_limit",
    "write_failsafe_duration",
    "stop_heartbeat",
    "start_heartbeat",
    "send_heartbeat",
    "disconnect",
    "reconnect",
    "set_ski",
)


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key path."""


@attrs.frozen
class EgSpec:
    """The simulated energy guard (control box / HEMS) as the sidecar would see it."""

    ski: str = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"
    brand: str = "HEMS-Simulator"
    model: str = "ControlBox"
    serial: str = "SIM-0001"
    device_type: str = "EnergyManagementSystem"
    ship_identifier: str = ""  # "" = "<brand>-<model>-<serial>", like eebus-go
    entity_address: tuple[int, ...] = (1,)
    requires_trust: bool = False  # True: connects only after RegisterRemoteSki of its SKI
    connect_delay_s: float = 1.0  # after StartService
    heartbeat_period_s: float = 60.0
    clock_skew_s: float = 0.0  # the EG's clock minus ours; heartbeats carry the EG's time

    @property
    def identifier(self) -> str:
        return self.ship_identifier or f"{self.brand}-{self.model}-{self.serial}"


@attrs.frozen
class SidecarSpec:
    """Knobs of the simulated sidecar itself (defaults are the real sidecar's values)."""

    approval_timeout_s: float = 10.0  # unanswered EG writes are rejected after this
    heartbeat_window_s: float = 120.0  # IsHeartbeatWithinDuration window
    discovery: bool = True  # False: answer SubscribeDiscoveryEvents UNIMPLEMENTED (v0.1.0)
    lose_event_on_stream_break: bool = True  # the Go handler swallows one event after a break
    strict_config: bool = True  # SetConfig also requires port and heartbeat timeout


@attrs.frozen
class ActionSpec:
    """One timed EG action, `at_s` after the EG first connected, optionally repeated."""

    action: str
    at_s: float
    every_s: float | None = None
    count: int | None = None  # None: once, or forever when every_s is set
    value: float | None = None
    value_min: float | None = None
    value_max: float | None = None
    active: bool = True
    duration_s: float | None = None
    ski: str | None = None


@attrs.frozen
class Scenario:
    name: str
    eg: EgSpec = EgSpec()
    sidecar: SidecarSpec = SidecarSpec()
    actions: tuple[ActionSpec, ...] = ()
    # Further energy managers on the network ([[other_eg]], same keys as [eg]): they appear on
    # mDNS connect_delay_s after StartService and never connect (somebody else's, or unpaired).
    other_egs: tuple[EgSpec, ...] = ()
    time_scale: float = 1.0
    seed: int | None = None  # None: random values differ per run
    description: str = ""
    source: Path | None = None

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale


def preset_names() -> list[str]:
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A preset name (`controlbox`, `dummy-cem`, ...) or the path of a TOML file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ScenarioError(
                f"unknown scenario {str(name_or_path)!r} (presets: {', '.join(preset_names())})"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    return parse_scenario(data, name=path.stem, source=path)


def parse_scenario(
    data: Mapping[str, Any], *, name: str = "custom", source: Path | None = None
) -> Scenario:
    reader = _Reader(data, "")
    scenario = Scenario(
        name=reader.string("name", name),
        description=reader.string("description", ""),
        seed=reader.optional_int("seed"),
        time_scale=reader.number("time_scale", 1.0, positive=True),
        eg=_parse_eg(reader.table("eg")),
        sidecar=_parse_sidecar(reader.table("sidecar")),
        actions=tuple(
            _parse_action(item, f"actions[{index}]")
            for index, item in enumerate(reader.table_list("actions"))
        ),
        other_egs=tuple(
            _parse_other_eg(item, f"other_eg[{index}]")
            for index, item in enumerate(reader.table_list("other_eg"))
        ),
        source=source,
    )
    reader.reject_unknown()
    skis = [scenario.eg.ski, *(eg.ski for eg in scenario.other_egs)]
    if len(set(skis)) != len(skis):
        raise ScenarioError("other_eg: every energy manager needs an SKI of its own")
    return scenario


def _parse_other_eg(raw: Any, path: str) -> EgSpec:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{path}: expected a table")
    if "ski" not in raw:
        raise ScenarioError(f"{path}.ski: required (40 hex characters)")
    return _parse_eg(_Reader(raw, path + "."))


def _parse_eg(reader: _Reader) -> EgSpec:
    default = EgSpec()
    raw_ski = reader.string("ski", default.ski)
    if not is_valid_ski(raw_ski):
        raise ScenarioError(f"{reader.prefix}ski: {raw_ski!r} is not 40 hex characters")
    address = reader.int_list("entity_address", list(default.entity_address))
    spec = EgSpec(
        ski=normalize_ski(raw_ski),
        brand=reader.string("brand", default.brand),
        model=reader.string("model", default.model),
        serial=reader.string("serial", default.serial),
        device_type=reader.string("device_type", default.device_type),
        ship_identifier=reader.string("ship_identifier", default.ship_identifier),
        entity_address=tuple(address),
        requires_trust=reader.boolean("requires_trust", default.requires_trust),
        connect_delay_s=reader.number("connect_delay_s", default.connect_delay_s),
        heartbeat_period_s=reader.number(
            "heartbeat_period_s", default.heartbeat_period_s, positive=True
        ),
        clock_skew_s=reader.number("clock_skew_s", default.clock_skew_s, signed=True),
    )
    reader.reject_unknown()
    return spec


def _parse_sidecar(reader: _Reader) -> SidecarSpec:
    default = SidecarSpec()
    spec = SidecarSpec(
        approval_timeout_s=reader.number(
            "approval_timeout_s", default.approval_timeout_s, positive=True
        ),
        heartbeat_window_s=reader.number(
            "heartbeat_window_s", default.heartbeat_window_s, positive=True
        ),
        discovery=reader.boolean("discovery", default.discovery),
        lose_event_on_stream_break=reader.boolean(
            "lose_event_on_stream_break", default.lose_event_on_stream_break
        ),
        strict_config=reader.boolean("strict_config", default.strict_config),
    )
    reader.reject_unknown()
    return spec


def _parse_action(raw: Any, path: str) -> ActionSpec:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{path}: expected a table")
    reader = _Reader(raw, path + ".")
    action = reader.string("action", "")
    if action not in ACTION_NAMES:
        raise ScenarioError(f"{path}.action: {action!r} is not one of {', '.join(ACTION_NAMES)}")
    every = reader.optional_number("every_s", positive=True)
    count = reader.optional_int("count")
    if count is not None and count < 1:
        raise ScenarioError(f"{path}.count: must be >= 1")
    spec = ActionSpec(
        action=action,
        at_s=reader.number("at_s", 0.0),
        every_s=every,
        count=count,
        value=reader.optional_number("value", signed=True),
        value_min=reader.optional_number("value_min", signed=True),
        value_max=reader.optional_number("value_max", signed=True),
        active=reader.boolean("active", True),
        duration_s=reader.optional_number("duration_s", signed=True),
        ski=reader.optional_string("ski"),
    )
    reader.reject_unknown()
    _check_action_params(spec, path)
    return spec


def _check_action_params(spec: ActionSpec, path: str) -> None:
    if spec.action == "send_limit":
        has_range = spec.value_min is not None or spec.value_max is not None
        if spec.value is None and not has_range:
            raise ScenarioError(f"{path}: send_limit needs value or value_min/value_max")
        if has_range and (spec.value_min is None or spec.value_max is None):
            raise ScenarioError(f"{path}: value_min and value_max go together")
        if has_range and spec.value is not None:
            raise ScenarioError(f"{path}: give value or value_min/value_max, not both")
        if (
            spec.value_min is not None
            and spec.value_max is not None
            and spec.value_min > spec.value_max
        ):
            raise ScenarioError(f"{path}: value_min is above value_max")
    elif spec.action == "write_failsafe_limit" and spec.value is None:
        raise ScenarioError(f"{path}: write_failsafe_limit needs value")
    elif spec.action == "write_failsafe_duration" and spec.duration_s is None:
        raise ScenarioError(f"{path}: write_failsafe_duration needs duration_s")
    elif spec.action == "set_ski" and (spec.ski is None or not is_valid_ski(spec.ski)):
        raise ScenarioError(f"{path}: set_ski needs ski (40 hex characters)")


class _Reader:
    """Typed, strict access to one TOML table; remembers which keys were read."""

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    @property
    def prefix(self) -> str:
        return self._prefix

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self._data.get(key)

    def _fail(self, key: str, expected: str) -> ScenarioError:
        return ScenarioError(f"{self._prefix}{key}: expected {expected}")

    def string(self, key: str, default: str) -> str:
        value = self.optional_string(key)
        return default if value is None else value

    def optional_string(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def optional_int(self, key: str) -> int | None:
        value = self._get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer")
        return value

    def optional_number(
        self, key: str, *, positive: bool = False, signed: bool = False
    ) -> float | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, "a number")
        number = float(value)
        if positive and not number > 0:
            raise self._fail(key, "a number > 0")
        if not positive and not signed and number < 0:
            raise self._fail(key, "a number >= 0")
        return number

    def number(
        self, key: str, default: float, *, positive: bool = False, signed: bool = False
    ) -> float:
        value = self.optional_number(key, positive=positive, signed=signed)
        return default if value is None else value

    def int_list(self, key: str, default: list[int]) -> list[int]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
        ):
            raise self._fail(key, "a list of non-negative integers")
        return value

    def table(self, key: str) -> _Reader:
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self._fail(key, "a table")
        return _Reader(value, f"{self._prefix}{key}.")

    def table_list(self, key: str) -> list[Any]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(key, "an array of tables ([[actions]])")
        return value

    def reject_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            names = ", ".join(self._prefix + key for key in unknown)
            raise ScenarioError(f"unknown key(s): {names}")


def with_overrides(
    scenario: Scenario,
    *,
    time_scale: float | None = None,
    seed: int | None = None,
    eg_ski: str | None = None,
    connect_delay_s: float | None = None,
    heartbeat_period_s: float | None = None,
    requires_trust: bool | None = None,
    clock_skew_s: float | None = None,
    approval_timeout_s: float | None = None,
    heartbeat_window_s: float | None = None,
    discovery: bool | None = None,
    lose_event_on_stream_break: bool | None = None,
    strict_config: bool | None = None,
    actions: tuple[ActionSpec, ...] | None = None,
) -> Scenario:
    """The scenario with some values replaced (None keeps the scenario's own value).

    connect_delay_s and heartbeat_period_s replace the scenario's values and are then
    scaled by time_scale like everything else; the sidecar timings are never scaled.
    """

    def pick(new: Any, old: Any) -> Any:
        return old if new is None else new

    if time_scale is not None and not time_scale > 0:
        raise ScenarioError("time_scale must be > 0")
    if eg_ski is not None and not is_valid_ski(eg_ski):
        raise ScenarioError(f"eg ski {eg_ski!r} is not 40 hex characters")
    eg = attrs.evolve(
        scenario.eg,
        ski=normalize_ski(eg_ski) if eg_ski is not None else scenario.eg.ski,
        connect_delay_s=pick(connect_delay_s, scenario.eg.connect_delay_s),
        heartbeat_period_s=pick(heartbeat_period_s, scenario.eg.heartbeat_period_s),
        requires_trust=pick(requires_trust, scenario.eg.requires_trust),
        clock_skew_s=pick(clock_skew_s, scenario.eg.clock_skew_s),
    )
    sidecar = attrs.evolve(
        scenario.sidecar,
        approval_timeout_s=pick(approval_timeout_s, scenario.sidecar.approval_timeout_s),
        heartbeat_window_s=pick(heartbeat_window_s, scenario.sidecar.heartbeat_window_s),
        discovery=pick(discovery, scenario.sidecar.discovery),
        lose_event_on_stream_break=pick(
            lose_event_on_stream_break, scenario.sidecar.lose_event_on_stream_break
        ),
        strict_config=pick(strict_config, scenario.sidecar.strict_config),
    )
    return attrs.evolve(
        scenario,
        time_scale=pick(time_scale, scenario.time_scale),
        seed=pick(seed, scenario.seed),
        eg=eg,
        sidecar=sidecar,
        actions=pick(actions, scenario.actions),
    )
