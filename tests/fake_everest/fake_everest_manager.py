"""The parts of EVerest's manager the fake everestpy needs, written from spec/everest.md.

everestpy (and the manager behind it) ships only with an EVerest build, so the tests use this
fake, kept as strict as the spec allows:
- manifest.yaml is checked against the manifest rules (`manifest_problems`): required
  `description` (>= 2 characters) and `metadata` (license URI, non-empty authors), nothing but
  the allowed top-level keys, every config entry with `type` and `description`, every
  requirement with `interface` and sane connection counts.
- The module config is built the way the manager does (`build_module_setup`, in the test
  process, before the module starts; the module process gets the result as JSON, as the real
  one gets it from the manager over MQTT): from the module's
  own manifest.yaml, defaults applied, each value checked against its entry's JSON Schema; a key
  without default that is missing, or a value of the wrong type, is refused before the module
  starts (ManagerRefused). Unknown keys only give a warning and are not passed on.
- Connections are checked against `requires` (counts, existing module ids, and that the
  connected implementation provides the required interface).
- Commands are checked against the interface (`command_problems`): the command name, exactly
  the declared arguments, and the ExternalLimits JSON Schema for `value`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import jsonschema

from eebus_bridge.sinks.external_limits import external_limits_problems

CONFIG_TYPES = ("boolean", "integer", "number", "string")
# What the modules the tests connect to provide: module type -> implementation id -> interface.
PROVIDERS: dict[str, dict[str, str]] = {
    "EnergyNode": {"energy_grid": "energy", "external_limits": "external_energy_limits"},
}
# interface -> command -> argument names (the fake checks `value` against ExternalLimits).
INTERFACE_COMMANDS: dict[str, dict[str, tuple[str, ...]]] = {
    "external_energy_limits": {"set_external_limits": ("value",)},
}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")

MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["description", "metadata"],
    "additionalProperties": False,
    "properties": {
        "description": {"type": "string", "minLength": 2},
        "metadata": {
            "type": "object",
            "required": ["license", "authors"],
            "properties": {
                "license": {"type": "string", "pattern": _URI.pattern},
                "authors": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            },
        },
        "config": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["type", "description"],
                "properties": {
                    "type": {"enum": list(CONFIG_TYPES)},
                    "description": {"type": "string", "minLength": 2},
                },
            },
        },
        "provides": {"type": "object"},
        "requires": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["interface"],
                "additionalProperties": False,
                "properties": {
                    "interface": {"type": "string", "minLength": 1},
                    "min_connections": {"type": "integer", "minimum": 0},
                    "max_connections": {"type": "integer", "minimum": 1},
                },
            },
        },
        "enable_external_mqtt": {"type": "boolean"},
        "enable_telemetry": {"type": "boolean"},
        "enable_global_errors": {"type": "boolean"},
    },
}


class ManagerRefused(Exception):
    """The manager would not start: `problems` says why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class ConnectionData:
    module_id: str
    implementation_id: str
    interface: str


@attrs.frozen
class ModuleSetupData:
    module_id: str
    module_name: str
    module_dir: Path
    etc_dir: Path
    module_config: dict[str, Any]
    connections: dict[str, list[ConnectionData]]
    warnings: tuple[str, ...]


def _schema_problems(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{where}{''.join(f'.{p}' for p in error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]


def manifest_problems(manifest: Any) -> list[str]:
    """Every way `manifest` breaks the manifest rules of spec/everest.md; [] when it is valid."""
    problems = _schema_problems(manifest, MANIFEST_SCHEMA, "manifest")
    if problems:
        return problems
    for key, entry in manifest.get("config", {}).items():
        try:
            jsonschema.Draft7Validator.check_schema(entry)
        except jsonschema.SchemaError as exc:
            problems.append(f"manifest.config.{key}: not a JSON Schema: {exc.message}")
            continue
        if "default" in entry:
            problems += _schema_problems(entry["default"], entry, f"manifest.config.{key}.default")
    for name, requirement in manifest.get("requires", {}).items():
        low = requirement.get("min_connections", 1)
        high = requirement.get("max_connections", 1)
        if high < low:
            problems.append(f"manifest.requires.{name}: max_connections below min_connections")
    return problems


def load_manifest(path: Path) -> dict[str, Any]:
    import yaml  # here: the module process (the fake framework) needs no YAML, like everestpy

    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ManagerRefused([f"{path}: cannot load the manifest: {exc}"]) from None
    problems = manifest_problems(manifest)
    if problems:
        raise ManagerRefused([f"{path}: {p}" for p in problems])
    return manifest  # type: ignore[no-any-return]


def build_module_setup(config_file: Path, module_id: str, prefix: Path) -> ModuleSetupData:
    """What the manager hands module `module_id` of `config_file`, or ManagerRefused."""
    import yaml

    document = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    modules = document.get("active_modules") if isinstance(document, dict) else None
    if not isinstance(modules, dict) or module_id not in modules:
        raise ManagerRefused([f"{config_file}: no active module with id {module_id!r}"])
    entry = modules[module_id]
    name = entry.get("module")
    module_dir = prefix / "libexec" / "everest" / "modules" / str(name)
    manifest = load_manifest(module_dir / "manifest.yaml")
    problems: list[str] = []
    found: list[str] = []

    given = entry.get("config_module") or {}
    if not isinstance(given, dict):
        raise ManagerRefused([f"{module_id}.config_module: must be a mapping"])
    module_config: dict[str, Any] = {}
    for key, schema in manifest.get("config", {}).items():
        if key in given:
            problems += _schema_problems(given[key], schema, f"{module_id}.config_module.{key}")
            module_config[key] = given[key]
        elif "default" in schema:
            module_config[key] = schema["default"]
        else:
            problems.append(f"{module_id}.config_module.{key}: mandatory key is missing")
    for key in given:
        if key not in manifest.get("config", {}):
            found.append(f"{module_id}.config_module.{key}: unknown key")

    connections: dict[str, list[ConnectionData]] = {}
    wired = entry.get("connections") or {}
    requires = manifest.get("requires", {})
    for requirement in wired:
        if requirement not in requires:
            problems.append(f"{module_id}.connections.{requirement}: no such requirement")
    for requirement, spec in requires.items():
        items = wired.get(requirement) or []
        low, high = spec.get("min_connections", 1), spec.get("max_connections", 1)
        if not low <= len(items) <= high:
            problems.append(
                f"{module_id}.connections.{requirement}: needs {low}..{high} connections, "
                f"got {len(items)}"
            )
        connections[requirement] = []
        for item in items:
            target = modules.get(item.get("module_id"))
            provided = PROVIDERS.get((target or {}).get("module"), {})
            interface = provided.get(item.get("implementation_id"))
            if target is None or interface != spec["interface"]:
                problems.append(
                    f"{module_id}.connections.{requirement}: {item} does not provide "
                    f"{spec['interface']}"
                )
                continue
            connections[requirement].append(
                ConnectionData(item["module_id"], item["implementation_id"], interface)
            )
    if problems:
        raise ManagerRefused(problems)
    return ModuleSetupData(
        module_id=module_id,
        module_name=str(name),
        module_dir=module_dir,
        etc_dir=prefix / "etc" / "everest",
        module_config=module_config,
        connections=connections,
        warnings=tuple(found),
    )


def setup_to_json(setup: ModuleSetupData) -> str:
    """The setup as the manager sends it to the module (the fake: a file the session reads)."""
    return json.dumps(attrs.asdict(setup, value_serializer=_plain))


def setup_from_json(text: str) -> ModuleSetupData:
    data = json.loads(text)
    return ModuleSetupData(
        module_id=data["module_id"],
        module_name=data["module_name"],
        module_dir=Path(data["module_dir"]),
        etc_dir=Path(data["etc_dir"]),
        module_config=data["module_config"],
        connections={
            name: [ConnectionData(**item) for item in items]
            for name, items in data["connections"].items()
        },
        warnings=tuple(data["warnings"]),
    )


def _plain(_instance: Any, _field: Any, value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def command_problems(interface: str, command: str, args: Any) -> list[str]:
    """Every way a call_command breaks the interface; [] when it is a valid call."""
    commands = INTERFACE_COMMANDS.get(interface, {})
    if command not in commands:
        return [f"interface {interface} has no command {command!r}"]
    if not isinstance(args, dict):
        return [f"{command}: the arguments must be a dict, got {type(args).__name__}"]
    expected = set(commands[command])
    if set(args) != expected:
        return [f"{command}: arguments must be exactly {sorted(expected)}, got {sorted(args)}"]
    return [f"{command}: value{p}" for p in external_limits_problems(args["value"])]
