"""The module's manifest and the translation of its config into the bridge's Config.

The manifest must carry the C++ EEBUS module's keys exactly (spec/everest.md table), so that an
existing config.yaml keeps working when only `module:` changes, plus ours with defaults.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from eebus_bridge.config import ConfigError, StatusConfig
from eebus_bridge.everest_module import (
    EXTRA_MODULE_KEYS,
    MODULE_KEYS,
    ModulePaths,
    config_from_module_config,
    manifest_text,
    split_ski_allowlist,
)
from eebus_bridge.everest_module.launch import check_module_setup
from tests._bridge_fixtures import EG_SKI, OTHER_SKI, ROOT
from tests._everest_module import manager, module_dir

# spec/everest.md, "The C++ EEBUS module's manifest": (key, type, default); None = mandatory.
CPP_KEYS: list[tuple[str, str, object]] = [
    ("manage_eebus_grpc_api_binary", "boolean", True),
    ("eebus_service_port", "integer", 4715),
    ("grpc_port", "integer", 50051),
    ("eebus_ems_ski_allowlist", "string", ""),
    ("accept_unknown_ems", "boolean", False),
    ("certificate_path", "string", "eebus/evse_cert"),
    ("private_key_path", "string", "eebus/evse_key"),
    ("eebus_grpc_api_binary_path", "string", "eebus_grpc_api"),
    ("vendor_code", "string", None),
    ("device_brand", "string", None),
    ("device_model", "string", None),
    ("serial_number", "string", None),
    ("failsafe_control_limit_W", "integer", 4200),
    ("max_nominal_power_W", "integer", 32000),
    ("restart_delay_s", "integer", 5),
    ("reconnect_delay_s", "integer", 5),
]
DEVICE = {
    "vendor_code": "TEST",
    "device_brand": "Brand",
    "device_model": "Model",
    "serial_number": "SN-1",
}


def manifest() -> dict[str, Any]:
    return yaml.safe_load(manifest_text())  # type: ignore[no-any-return]


def defaults() -> dict[str, Any]:
    """The module config the manager builds from the manifest for a config with no keys."""
    return {
        key: entry["default"] for key, entry in manifest()["config"].items() if "default" in entry
    }


@pytest.fixture
def paths(tmp_path: Path) -> ModulePaths:
    """An EVerest prefix whose module folder holds an executable sidecar."""
    libexec = tmp_path / "libexec" / "everest" / "modules" / "PyEebusBridge"
    libexec.mkdir(parents=True)
    binary = libexec / "eebus_grpc_api"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return ModulePaths(etc=tmp_path / "etc" / "everest", libexec=libexec)


def translate(paths: ModulePaths, **changes: Any) -> Any:
    return config_from_module_config({**defaults(), **DEVICE, **changes}, paths)


def problems_of(paths: ModulePaths, **changes: Any) -> list[str]:
    with pytest.raises(ConfigError) as error:
        translate(paths, **changes)
    return error.value.problems


# --------------------------------------------------------------------------- manifest


def test_manifest_has_the_cpp_modules_keys_with_same_type_and_default() -> None:
    config = manifest()["config"]
    for key, type_, default in CPP_KEYS:
        entry = config[key]
        assert entry["type"] == type_, key
        if default is None:
            assert "default" not in entry, f"{key} must be mandatory"
        else:
            assert entry["default"] == default, key
            assert type(entry["default"]) is type(default), key
        # No constraint the C++ manifest lacks: the manager accepts what it accepted.
        assert set(entry) <= {"type", "description", "default"}, key


def test_manifest_keys_are_the_cpp_keys_plus_ours_all_with_defaults() -> None:
    config = manifest()["config"]
    assert list(config) == [key for key, _, _ in CPP_KEYS] + list(EXTRA_MODULE_KEYS)
    assert list(config) == list(MODULE_KEYS)
    assert all("default" in config[key] for key in EXTRA_MODULE_KEYS)


def test_manifest_requires_one_external_energy_limits_sink_and_follows_the_rules() -> None:
    document = manifest()
    assert manager.manifest_problems(document) == []
    assert document["requires"] == {
        "eebus_energy_sink": {
            "interface": "external_energy_limits",
            "min_connections": 1,
            "max_connections": 1,
        }
    }
    assert "provides" not in document
    assert document["metadata"]["license"].endswith("Apache-2.0")


def _drop(path: tuple[str, ...]) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path
        target = document
        for key in parents:
            target = target[key]
        del target[last]

    return change


def _set(path: tuple[str, ...], value: object) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path
        target = document
        for key in parents:
            target = target[key]
        target[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_drop(("description",)), "'description' is a required property"),
        (_set(("description",), "x"), "manifest.description: 'x' is too short"),
        (_drop(("metadata", "license")), "'license' is a required property"),
        (_set(("metadata", "license"), "Apache 2.0"), "manifest.metadata.license"),
        (_set(("metadata", "authors"), []), "manifest.metadata.authors"),
        (_drop(("config", "grpc_port", "type")), "'type' is a required property"),
        (_drop(("config", "grpc_port", "description")), "'description' is a required"),
        (_set(("config", "grpc_port", "type"), "float"), "manifest.config.grpc_port.type"),
        (_set(("config", "grpc_port", "default"), "50051"), "grpc_port.default"),
        (_set(("version",), 1), "Additional properties are not allowed ('version'"),
        (_drop(("requires", "eebus_energy_sink", "interface")), "'interface' is a required"),
        (_set(("requires", "eebus_energy_sink", "max_connections"), 0), "max_connections"),
    ],
)
def test_a_manifest_that_breaks_a_rule_is_refused(change: Any, expected: str) -> None:
    document = copy.deepcopy(manifest())
    change(document)
    problems = manager.manifest_problems(document)
    assert any(expected in problem for problem in problems), problems


def _installed_prefix(tmp_path: Path, manifest_document: dict[str, Any] | None = None) -> Path:
    prefix = tmp_path / "prefix"
    folder = module_dir(prefix)
    folder.mkdir(parents=True)
    text = manifest_text() if manifest_document is None else yaml.safe_dump(manifest_document)
    (folder / "manifest.yaml").write_text(text)
    return prefix


def test_a_wrong_requirement_interface_is_refused_by_the_manager(tmp_path: Path) -> None:
    document = manifest()
    document["requires"]["eebus_energy_sink"]["interface"] = "energy"
    prefix = _installed_prefix(tmp_path, document)
    config_file = tmp_path / "config.yaml"
    shutil.copy(ROOT / "configs" / "everest-config.yaml", config_file)
    with pytest.raises(manager.ManagerRefused, match="does not provide energy"):
        manager.build_module_setup(config_file, "eebus", prefix)


def test_the_example_config_yaml_is_accepted_and_translates_cleanly(tmp_path: Path) -> None:
    prefix = _installed_prefix(tmp_path)
    setup = manager.build_module_setup(ROOT / "configs" / "everest-config.yaml", "eebus", prefix)
    assert [c.module_id for c in setup.connections["eebus_energy_sink"]] == [
        "grid_connection_point"
    ]
    binary = setup.module_dir / "eebus_grpc_api"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    loaded = config_from_module_config(
        setup.module_config, ModulePaths(etc=setup.etc_dir, libexec=setup.module_dir)
    )
    assert loaded.config.sidecar.binary == str(binary)
    assert loaded.config.eebus.ems_ski_allowlist == (EG_SKI,)
    assert loaded.warnings == ()


def test_a_cpp_module_config_works_after_changing_only_the_module_name(tmp_path: Path) -> None:
    prefix = _installed_prefix(tmp_path)
    document = yaml.safe_load((ROOT / "configs" / "everest-config.yaml").read_text())
    entry = document["active_modules"]["eebus"]
    # Only the C++ keys, as an existing config.yaml for `module: EEBUS` has them.
    cpp_keys = {key for key, _, _ in CPP_KEYS}
    entry["config_module"] = {
        key: value for key, value in entry["config_module"].items() if key in cpp_keys
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(document))
    setup = manager.build_module_setup(config_file, "eebus", prefix)
    assert setup.module_config["approval_policy"] == "spec"  # ours: defaults filled in
    assert setup.warnings == ()


# --------------------------------------------------------------------------- translation


def test_defaults_give_the_cpp_modules_values(paths: ModulePaths) -> None:
    config = translate(paths, eebus_ems_ski_allowlist=EG_SKI).config
    assert config.device.vendor_code == "TEST"
    assert config.device.brand == "Brand"
    assert config.device.model == "Model"
    assert config.device.serial_number == "SN-1"
    assert config.eebus.ship_port == 4715
    assert config.eebus.grpc_port == 50051
    assert config.sidecar.manage is True
    assert config.sidecar.restart_delay_s == 5.0
    assert config.eebus.reconnect_delay_s == 5.0
    assert config.lpc.failsafe_limit_W == 4200.0
    assert config.lpc.max_nominal_power_W == 32000.0
    assert config.lpc.approval_policy == "spec"
    assert config.outputs == ()


def test_managed_relative_paths_follow_the_cpp_rules(paths: ModulePaths) -> None:
    config = translate(paths, certificate_path="/abs/cert.pem").config
    assert config.sidecar.certificate == Path("/abs/cert.pem")
    assert config.sidecar.private_key == paths.etc / "certs" / "eebus" / "evse_key"
    assert config.sidecar.binary == str(paths.libexec / "eebus_grpc_api")
    assert config.lpc.state_file == paths.etc / "certs" / "eebus" / "lpc_state.json"


def test_history_keys_map_to_the_history_section(paths: ModulePaths) -> None:
    default = translate(paths).config
    assert default.history.enabled is True
    assert default.history.retention_days == 400
    assert default.history_path == paths.etc / "certs" / "eebus" / "history.sqlite3"
    chosen = translate(
        paths, history_enabled=False, history_path="logs/h.db", history_retention_days=30
    ).config
    assert chosen.history.enabled is False
    assert chosen.history_path == paths.etc / "certs" / "logs" / "h.db"
    assert chosen.history.retention_days == 30
    assert problems_of(paths, history_retention_days=0)[0].startswith("history_retention_days:")


def test_status_keys_map_to_the_status_section(paths: ModulePaths) -> None:
    default = translate(paths).config
    assert default.status == StatusConfig("127.0.0.1:8780", None, False)
    chosen = translate(
        paths, status_listen="0.0.0.0:8780", status_token="a-long-status-token-0123456789"
    ).config
    assert chosen.status == StatusConfig("0.0.0.0:8780", "a-long-status-token-0123456789", False)
    anonymous = translate(paths, status_listen="0.0.0.0:8780", status_allow_anonymous=True)
    assert anonymous.config.status.allow_anonymous is True
    assert translate(paths, status_listen="").config.status.listen == ""
    [problem] = problems_of(paths, status_listen="0.0.0.0:8780")
    assert problem.startswith("status_token: required when status_listen")
    assert problems_of(paths, status_listen="8780")[0].startswith("status_listen: must be")


def test_grpc_transport_maps_to_the_eebus_section(paths: ModulePaths) -> None:
    assert translate(paths).config.eebus.grpc_transport == "grpclib"
    assert translate(paths, grpc_transport="grpcio").config.eebus.grpc_transport == "grpcio"
    [problem] = problems_of(paths, grpc_transport="h2")
    assert problem.startswith("grpc_transport: must be one of")


def test_managed_binary_must_exist_and_be_executable(paths: ModulePaths) -> None:
    assert problems_of(paths, eebus_grpc_api_binary_path="bin/missing") == [
        f"eebus_grpc_api_binary_path: {paths.libexec / 'bin' / 'missing'} does not exist"
    ]
    (paths.libexec / "eebus_grpc_api").chmod(0o644)  # no x bit: not executable, even for root
    assert problems_of(paths) == [
        f"eebus_grpc_api_binary_path: {paths.libexec / 'eebus_grpc_api'} is not executable"
    ]


def test_unmanaged_sidecar_ignores_the_three_paths(paths: ModulePaths, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = translate(
        paths,
        manage_eebus_grpc_api_binary=False,
        eebus_grpc_api_binary_path="does/not/exist",
        certificate_path=str(blocker / "cert"),  # under a file: would be a problem if used
        private_key_path=str(blocker / "key"),
    ).config
    assert config.sidecar.manage is False
    # Even when the bridge's stand-in defaults for them could not be used.
    paths.etc.parent.mkdir(parents=True)
    paths.etc.write_text("not a folder")
    state_file = str(tmp_path / "state.json")
    unmanaged = translate(paths, manage_eebus_grpc_api_binary=False, state_file=state_file)
    assert unmanaged.config.sidecar.manage is False
    with pytest.raises(ConfigError) as error:
        translate(paths, state_file=state_file)
    assert error.value.problems[0].startswith("certificate_path: cannot create")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        (" , ,", ()),
        (f" {EG_SKI.upper()} ", (EG_SKI,)),
        (f"{EG_SKI},{OTHER_SKI}, {EG_SKI.upper()}", (EG_SKI, OTHER_SKI)),
        ("5E1D 6A3C 0F4B 2A79 80C1 D2E3 F4A5 B6C7 D8E9 F001", (EG_SKI,)),
    ],
)
def test_allowlist_is_split_trimmed_lowered_and_folded(
    paths: ModulePaths, text: str, expected: tuple[str, ...]
) -> None:
    assert split_ski_allowlist(text) == expected
    assert translate(paths, eebus_ems_ski_allowlist=text).config.eebus.ems_ski_allowlist == (
        expected
    )


def test_every_problem_is_reported_at_once_by_module_key(paths: ModulePaths) -> None:
    problems = problems_of(
        paths,
        vendor_code="",
        device_model=" ",
        eebus_service_port=-1,
        grpc_port=70000,
        failsafe_control_limit_W=-5,
        max_nominal_power_W=0,
        eebus_ems_ski_allowlist=f"{EG_SKI}, AB:CD, xyz",
        restart_delay_s="5",
        approval_policy="lenient",
    )
    assert problems == [
        "eebus_ems_ski_allowlist: entry 2 ('ab:cd') is not an SKI: must be 40 hex digits",
        "eebus_ems_ski_allowlist: entry 3 ('xyz') is not an SKI: must be 40 hex digits",
        "vendor_code: must not be empty",
        "device_model: must not be empty",
        "eebus_service_port: must be between 1 and 65535, got -1",
        "grpc_port: must be between 1 and 65535, got 70000",
        'restart_delay_s: must be a number, got string "5"',
        "failsafe_control_limit_W: must be 0 or more, got -5",
        "max_nominal_power_W: must be greater than 0, got 0",
        'approval_policy: must be one of "spec", "permissive", got "lenient"',
    ]


def test_missing_keys_are_problems_and_unknown_keys_warnings(paths: ModulePaths) -> None:
    config = {**defaults(), **DEVICE, "colour": "red"}
    del config["serial_number"]
    del config["grpc_port"]
    with pytest.raises(ConfigError) as error:
        config_from_module_config(config, paths)
    assert error.value.problems == [
        "grpc_port: required key is missing",
        "serial_number: required key is missing",
    ]
    assert translate(paths, colour="red").warnings[0] == "colour: unknown key, ignored"


def test_allowlist_of_the_wrong_type_is_named(paths: ModulePaths) -> None:
    assert problems_of(paths, eebus_ems_ski_allowlist=[EG_SKI]) == [
        f"eebus_ems_ski_allowlist: must be a string of comma-separated SKIs, got ['{EG_SKI}']"
    ]


def test_warnings_name_module_keys(paths: ModulePaths) -> None:
    warnings = translate(
        paths, accept_unknown_ems=True, failsafe_control_limit_W=40000, max_nominal_power_W=11000
    ).warnings
    assert any(w.startswith("accept_unknown_ems = true: any EMS") for w in warnings), warnings
    assert any(
        w.startswith("failsafe_control_limit_W = 40000 is above max_nominal_power_W = 11000")
        for w in warnings
    ), warnings
    empty = translate(paths).warnings
    assert any(
        w.startswith("eebus_ems_ski_allowlist is empty and accept_unknown_ems is false")
        for w in empty
    ), empty


def test_module_setup_needs_exactly_one_connection_and_reads_the_log_level(
    paths: ModulePaths,
) -> None:
    config = {**defaults(), **DEVICE, "log_level": "debug"}
    start = check_module_setup(config, ["node"], paths)
    assert start.config is not None
    assert start.log_level == "debug"
    for connections in ([], ["a", "b"]):
        start = check_module_setup({**config, "vendor_code": ""}, connections, paths)
        assert start.config is None
        assert start.problems == (
            "vendor_code: must not be empty",
            "eebus_energy_sink: needs exactly one connection (an EnergyNode's external_limits), "
            f"got {len(connections)}",
        )


def test_module_setup_checks_the_certificate_pair_when_the_sidecar_is_managed(
    paths: ModulePaths,
) -> None:
    certificate = paths.etc / "certs" / "eebus" / "evse_cert"
    certificate.parent.mkdir(parents=True)
    certificate.write_text("not a certificate")
    config = {**defaults(), **DEVICE}
    start = check_module_setup(config, ["node"], paths)
    assert start.config is None
    assert len(start.problems) == 1
    assert start.problems[0].startswith("private_key_path: "), start.problems
    unmanaged = {**config, "manage_eebus_grpc_api_binary": False}
    assert check_module_setup(unmanaged, ["node"], paths).config is not None
