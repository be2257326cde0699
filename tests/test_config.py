"""The strict config loader: defaults, every kind of problem, paths, warnings, robustness."""

from __future__ import annotations

import copy
import os
import re
import tempfile
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eebus_bridge.config import (
    OUTPUT_TYPES,
    Config,
    ConfigError,
    DeviceConfig,
    EebusConfig,
    EverestApiOutput,
    EverestLegacyApiOutput,
    JsonlOutput,
    LoadedConfig,
    LpcConfig,
    LpcTiming,
    MqttTls,
    RpcApiOutput,
    SidecarConfig,
    config_to_toml_dict,
    dump_toml,
    load_config,
)

SKI = "0123456789abcdef0123456789abcdef01234567"
OTHER_SKI = "fedcba9876543210fedcba9876543210fedcba98"
DELETE = object()  # a patch value that removes the key


def minimal_document() -> dict[str, Any]:
    """The smallest config without warnings: device, one SKI, an external sidecar, stdout."""
    return {
        "device": {"vendor_code": "V", "brand": "B", "model": "M", "serial_number": "S1"},
        "eebus": {"ems_ski_allowlist": [SKI]},
        "sidecar": {"manage": False},
        "output": [{"type": "jsonl"}],
    }


def write(folder: Path, document: dict[str, Any] | str | bytes, name: str = "bridge.toml") -> Path:
    path = folder / name
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        path.write_text(document if isinstance(document, str) else dump_toml(document))
    return path


def patched(document: dict[str, Any], patches: dict[str, Any]) -> dict[str, Any]:
    """A copy with dotted keys set ("eebus.grpc_port", "output[0].port"); DELETE removes."""
    result = copy.deepcopy(document)
    for dotted, value in patches.items():
        *parents, last = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
        node: Any = result
        for part in parents:
            node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
        if last.startswith("["):
            node[int(last[1:-1])] = value
        elif value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return result


def problems_of(folder: Path, document: dict[str, Any] | str | bytes) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(folder, document))
    return caught.value.problems


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- defaults


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, minimal_document()))
    config = loaded.config

    assert loaded.warnings == ()
    assert config.source == (tmp_path / "bridge.toml").resolve()
    assert config.device == DeviceConfig("V", "B", "M", "S1")
    assert config.eebus == EebusConfig(ems_ski_allowlist=(SKI,))
    assert config.sidecar == SidecarConfig(
        manage=False,
        binary="eebus_grpc_api",
        certificate=tmp_path / "eebus.crt",
        private_key=tmp_path / "eebus.key",
    )
    assert config.lpc == LpcConfig(state_file=tmp_path / "state.json")
    assert config.lpc.timing == LpcTiming(120.0, 120.0, 120.0, 60.0)
    assert config.outputs == (JsonlOutput(path=None),)


def test_seconds_and_watts_accept_integers_and_store_floats(tmp_path: Path) -> None:
    document = patched(
        minimal_document(),
        {"eebus.rpc_timeout_s": 2, "lpc.failsafe_limit_W": 3000, "lpc.timing.write_window_s": 0.5},
    )
    config = load_config(write(tmp_path, document)).config

    assert config.eebus.rpc_timeout_s == 2.0
    assert isinstance(config.eebus.rpc_timeout_s, float)
    assert isinstance(config.lpc.failsafe_limit_W, float)
    assert config.lpc.timing.write_window_s == 0.5


def test_every_output_type_with_defaults(tmp_path: Path) -> None:
    document = patched(
        minimal_document(),
        {
            "output": [
                {"type": "jsonl", "path": "-"},
                {"type": "everest-api", "module_id": "eebus_lpc_api"},
                {"type": "everest-legacy-api", "evse_manager_id": "evse_manager"},
                {"type": "rpcapi", "evse_indices": [2, 1]},
            ]
        },
    )
    outputs = load_config(write(tmp_path, document)).config.outputs

    assert outputs == (
        JsonlOutput(path=None),
        EverestApiOutput(module_id="eebus_lpc_api"),
        EverestLegacyApiOutput(evse_manager_id="evse_manager"),
        RpcApiOutput(evse_indices=(2, 1)),
    )
    assert set(OUTPUT_TYPES) == {"jsonl", "everest-api", "everest-legacy-api", "rpcapi"}


# --------------------------------------------------------------------------- problems, by section

MQTT = {"type": "everest-api", "module_id": "m"}
LEGACY = {"type": "everest-legacy-api", "evse_manager_id": "evse_manager"}
RPC = {"type": "rpcapi"}
ONE_OF_TYPES = 'must be one of "jsonl", "everest-api", "everest-legacy-api", "rpcapi"'
PROBLEM_CASES: list[tuple[str, dict[str, Any], str]] = [
    # [device]
    ("device missing", {"device": DELETE}, "device: required table [device] is missing"),
    ("device not a table", {"device": "x"}, 'device: must be a table, got string "x"'),
    ("brand missing", {"device.brand": DELETE}, "device.brand: required key is missing"),
    ("brand empty", {"device.brand": " "}, "device.brand: must not be empty"),
    (
        "country lower case",
        {"device.country": "de"},
        'device.country: must be two upper-case letters (ISO 3166-1 alpha-2, e.g. "DE"), got "de"',
    ),
    (
        "country three letters",
        {"device.country": "DEU"},
        'device.country: must be two upper-case letters (ISO 3166-1 alpha-2, e.g. "DE"), got "DEU"',
    ),
    ("country type", {"device.country": 49}, "device.country: must be a string, got integer 49"),
    ("model wrong type", {"device.model": 7}, "device.model: must be a string, got integer 7"),
    ("device unknown key", {"device.colour": "red"}, "device.colour: unknown key"),
    # [eebus]
    (
        "port out of range",
        {"eebus.grpc_port": 70000},
        "eebus.grpc_port: must be between 1 and 65535, got 70000",
    ),
    ("port zero", {"eebus.ship_port": 0}, "eebus.ship_port: must be between 1 and 65535, got 0"),
    (
        "port as string",
        {"eebus.grpc_port": "8080"},
        'eebus.grpc_port: must be an integer, got string "8080"',
    ),
    (
        "port as bool",
        {"eebus.ship_port": True},
        "eebus.ship_port: must be an integer, got boolean true",
    ),
    (
        "int as float",
        {"eebus.heartbeat_timeout_s": 3.9},
        "eebus.heartbeat_timeout_s: must be an integer, got float 3.9",
    ),
    (
        "heartbeat too short",
        {"eebus.heartbeat_timeout_s": 4},
        "eebus.heartbeat_timeout_s: must be between 5 and 3600, got 4",
    ),
    (
        "allowlist as string",
        {"eebus.ems_ski_allowlist": SKI},
        f'eebus.ems_ski_allowlist: must be an array, got string "{SKI}"',
    ),
    (
        "allowlist item type",
        {"eebus.ems_ski_allowlist": [SKI, 5]},
        "eebus.ems_ski_allowlist[1]: must be a string, got integer 5",
    ),
    (
        "bad SKI",
        {"eebus.ems_ski_allowlist": [SKI, "12:34"]},
        "eebus.ems_ski_allowlist[1]: must be 40 hex digits (spaces and colons are ignored), "
        'got "12:34"',
    ),
    (
        "bool as string",
        {"eebus.accept_unknown_ems": "false"},
        'eebus.accept_unknown_ems: must be true or false, got string "false"',
    ),
    (
        "bool as int",
        {"eebus.accept_unknown_ems": 1},
        "eebus.accept_unknown_ems: must be true or false, got integer 1",
    ),
    (
        "seconds zero",
        {"eebus.reconnect_delay_s": 0},
        "eebus.reconnect_delay_s: must be greater than 0, got 0",
    ),
    (
        "seconds as string",
        {"eebus.rpc_timeout_s": "5"},
        'eebus.rpc_timeout_s: must be a number, got string "5"',
    ),
    (
        "seconds as bool",
        {"eebus.rpc_timeout_s": True},
        "eebus.rpc_timeout_s: must be a number, got boolean true",
    ),
    (
        "misspelt key",
        {"eebus.grpcport": 1},
        'eebus.grpcport: unknown key (did you mean "grpc_port"?)',
    ),
    # [sidecar]
    (
        "manage as string",
        {"sidecar.manage": "yes"},
        'sidecar.manage: must be true or false, got string "yes"',
    ),
    ("binary empty", {"sidecar.binary": ""}, "sidecar.binary: must not be empty"),
    (
        "certificate type",
        {"sidecar.certificate": 5},
        "sidecar.certificate: must be a string, got integer 5",
    ),
    ("key empty", {"sidecar.private_key": ""}, "sidecar.private_key: must not be empty"),
    (
        "restart delay NaN",
        {"sidecar.restart_delay_s": float("nan")},
        "sidecar.restart_delay_s: must be a finite number, got float nan",
    ),
    # [lpc]
    (
        "negative failsafe limit",
        {"lpc.failsafe_limit_W": -1},
        "lpc.failsafe_limit_W: must be 0 or more, got -1",
    ),
    (
        "infinite failsafe limit",
        {"lpc.failsafe_limit_W": float("inf")},
        "lpc.failsafe_limit_W: must be a finite number, got float inf",
    ),
    (
        "nominal power zero",
        {"lpc.max_nominal_power_W": 0},
        "lpc.max_nominal_power_W: must be greater than 0, got 0",
    ),
    (
        "failsafe duration below 2 h",
        {"lpc.failsafe_duration_s": 3600},
        "lpc.failsafe_duration_s: must be between 7200 and 86400, got 3600",
    ),
    (
        "failsafe duration max above 24 h",
        {"lpc.failsafe_duration_max_s": 90000.5},
        "lpc.failsafe_duration_max_s: must be between 7200 and 86400, got 90000.5",
    ),
    (
        "failsafe duration max below duration",
        {"lpc.failsafe_duration_s": 80000, "lpc.failsafe_duration_max_s": 70000},
        "lpc.failsafe_duration_max_s: must be at least lpc.failsafe_duration_s (80000), got 70000",
    ),
    (
        "unknown policy",
        {"lpc.approval_policy": "strict"},
        'lpc.approval_policy: must be one of "spec", "permissive", got "strict"',
    ),
    (
        "policy wrong type",
        {"lpc.on_failsafe_expiry": 1},
        'lpc.on_failsafe_expiry: must be one of "unlimited", "stay", got integer 1',
    ),
    ("state file empty", {"lpc.state_file": ""}, "lpc.state_file: must not be empty"),
    ("timing not a table", {"lpc.timing": 5}, "lpc.timing: must be a table, got integer 5"),
    (
        "timing zero",
        {"lpc.timing.heartbeat_timeout_s": 0},
        "lpc.timing.heartbeat_timeout_s: must be greater than 0, got 0",
    ),
    ("timing unknown key", {"lpc.timing.tick_s": 1}, "lpc.timing.tick_s: unknown key"),
    # [[output]]
    ("no output", {"output": DELETE}, "output: at least one [[output]] table is required"),
    ("empty output", {"output": []}, "output: at least one [[output]] table is required"),
    (
        "output as table",
        {"output": {"type": "jsonl"}},
        "output: must be an array of tables ([[output]]), got a table",
    ),
    ("output item not a table", {"output": [5]}, "output[0]: must be a table, got integer 5"),
    ("output type missing", {"output[0]": {}}, "output[0].type: required key is missing"),
    (
        "output type unknown",
        {"output[0].type": "mqtt"},
        f'output[0].type: {ONE_OF_TYPES}, got "mqtt"',
    ),
    (
        "output type wrong type",
        {"output[0].type": 1},
        f"output[0].type: {ONE_OF_TYPES}, got integer 1",
    ),
    ("jsonl path empty", {"output[0].path": ""}, "output[0].path: must not be empty"),
    ("jsonl unknown key", {"output[0].file": "x"}, "output[0].file: unknown key"),
    (
        "module id missing",
        {"output[0]": {"type": "everest-api"}},
        "output[0].module_id: required key is missing",
    ),
    (
        "module id with slash",
        {"output[0]": {**MQTT, "module_id": "a/b"}},
        'output[0].module_id: must not contain "/" (it is one MQTT topic level), got "a/b"',
    ),
    (
        "module id with wildcards",
        {"output[0]": {**MQTT, "module_id": "a+#"}},
        'output[0].module_id: must not contain "#" "+" (it is one MQTT topic level), got "a+#"',
    ),
    (
        "module id empty",
        {"output[0]": {**MQTT, "module_id": ""}},
        "output[0].module_id: must not be empty",
    ),
    ("host empty", {"output[0]": {**MQTT, "host": ""}}, "output[0].host: must not be empty"),
    (
        "mqtt port out of range",
        {"output[0]": {**MQTT, "port": 0}},
        "output[0].port: must be between 1 and 65535, got 0",
    ),
    (
        "mqtt port as string",
        {"output[0]": {**MQTT, "port": "1883"}},
        'output[0].port: must be an integer, got string "1883"',
    ),
    (
        "unknown transport",
        {"output[0]": {**MQTT, "transport": "ssl"}},
        'output[0].transport: must be one of "tcp", "websockets", "unix", got "ssl"',
    ),
    (
        "unix without path",
        {"output[0]": {**MQTT, "transport": "unix"}},
        'output[0].path: required when transport = "unix" (the broker\'s socket)',
    ),
    (
        "path without unix",
        {"output[0]": {**MQTT, "path": "broker.sock"}},
        'output[0].path: only used with transport = "unix", but transport is "tcp"',
    ),
    (
        "wildcard in prefix",
        {"output[0]": {**MQTT, "topic_prefix": "site/+/"}},
        'output[0].topic_prefix: must not contain the MQTT wildcards "+" or "#", got "site/+/"',
    ),
    (
        "ws path without slash",
        {"output[0]": {**MQTT, "ws_path": "mqtt"}},
        'output[0].ws_path: must start with "/", got "mqtt"',
    ),
    (
        "check period zero",
        {"output[0]": {**MQTT, "communication_check_s": 0}},
        "output[0].communication_check_s: must be greater than 0, got 0",
    ),
    (
        "username wrong type",
        {"output[0]": {**MQTT, "username": 5}},
        "output[0].username: must be a string, got integer 5",
    ),
    (
        "tls verify wrong type",
        {"output[0]": {**MQTT, "tls": {"verify": "no"}}},
        'output[0].tls.verify: must be true or false, got string "no"',
    ),
    (
        "tls unknown key",
        {"output[0]": {**MQTT, "tls": {"insecure": True}}},
        "output[0].tls.insecure: unknown key",
    ),
    (
        "tls not a table",
        {"output[0]": {**MQTT, "tls": True}},
        "output[0].tls: must be a table, got boolean true",
    ),
    (
        "legacy id with hash",
        {"output[0]": {**LEGACY, "evse_manager_id": "evse#1"}},
        'output[0].evse_manager_id: must not contain "#" (it is one MQTT topic level), '
        'got "evse#1"',
    ),
    (
        "legacy has no check period",
        {"output[0]": {**LEGACY, "communication_check_s": 2}},
        "output[0].communication_check_s: unknown key",
    ),
    (
        "rpcapi http url",
        {"output[0]": {**RPC, "url": "http://127.0.0.1:8080"}},
        'output[0].url: must be a WebSocket URL starting with "ws://" or "wss://", '
        'got "http://127.0.0.1:8080"',
    ),
    (
        "rpcapi float index",
        {"output[0]": {**RPC, "evse_indices": [1.5]}},
        "output[0].evse_indices[0]: must be an integer, got float 1.5",
    ),
    (
        "rpcapi power zero",
        {"output[0]": {**RPC, "unlimited_power_W": 0}},
        "output[0].unlimited_power_W: must be greater than 0, got 0",
    ),
    (
        "rpcapi unknown split",
        {"output[0]": {**RPC, "split": "half"}},
        'output[0].split: must be one of "each", "equal", got "half"',
    ),
    (
        "date as port",
        {"eebus.grpc_port": datetime(1979, 5, 27, 7, 32)},
        "eebus.grpc_port: must be an integer, got date-time 1979-05-27T07:32:00",
    ),
    (
        "array of dates as output",
        {"output": [[date(1979, 5, 27), time(7, 32)]]},
        "output[0]: must be a table, got array [1979-05-27, 07:32:00]",
    ),
    # top level
    ("top-level typo", {"outputs": []}, 'outputs: unknown key (did you mean "output"?)'),
    ("odd top-level key", {"odd key": 1}, '"odd key": unknown key'),
]


@pytest.mark.parametrize(
    ("patches", "expected"),
    [pytest.param(patches, expected, id=name) for name, patches, expected in PROBLEM_CASES],
)
def test_each_problem_is_reported_with_its_key_path(
    tmp_path: Path, patches: dict[str, Any], expected: str
) -> None:
    assert problems_of(tmp_path, patched(minimal_document(), patches)) == [expected]


def test_several_bad_evse_indices_are_each_reported(tmp_path: Path) -> None:
    document = patched(minimal_document(), {"output[0]": {**RPC, "evse_indices": [1, -1, 1]}})

    assert problems_of(tmp_path, document) == [
        "output[0].evse_indices[1]: must be 0 or more, got -1",
        "output[0].evse_indices[2]: repeats EVSE index 1",
    ]


FIVE_MISTAKES = """\
[device]
vendor_code = "V"
brand = "B"
model = "M"
# serial_number forgotten

[eebus]
grpc_port = 70000
heartbeat_timeout_s = "60"
ems_ski_allowlist = ["not-a-ski"]
grpcport = 50051

[sidecar]
manage = false

[[output]]
type = "jsonl"
"""


def test_five_mistakes_give_exactly_five_problems(tmp_path: Path) -> None:
    assert sorted(problems_of(tmp_path, FIVE_MISTAKES)) == sorted(
        [
            "device.serial_number: required key is missing",
            "eebus.grpc_port: must be between 1 and 65535, got 70000",
            'eebus.heartbeat_timeout_s: must be an integer, got string "60"',
            "eebus.ems_ski_allowlist[0]: must be 40 hex digits (spaces and colons are ignored), "
            'got "not-a-ski"',
            'eebus.grpcport: unknown key (did you mean "grpc_port"?)',
        ]
    )


def test_problems_in_every_section_are_reported_together(tmp_path: Path) -> None:
    document = patched(
        minimal_document(),
        {
            "device.brand": 1,
            "eebus.ship_port": -1,
            "sidecar.manage": 0,
            "lpc.approval_policy": "x",
            "lpc.timing.init_timeout_s": -5,
            "output": [{"type": "jsonl"}, {"type": "rpcapi", "url": "x"}, {"type": "?"}],
            "extra": 1,
        },
    )
    keys = [problem.split(":")[0] for problem in problems_of(tmp_path, document)]

    assert keys == [
        "device.brand",
        "eebus.ship_port",
        "sidecar.manage",
        "lpc.approval_policy",
        "lpc.timing.init_timeout_s",
        "output[1].url",
        "output[2].type",
        "extra",
    ]


def test_values_in_problems_stay_on_one_line(tmp_path: Path) -> None:
    document = patched(minimal_document(), {"device.model": ["a\nb"], "eebus.\n": 1})

    assert problems_of(tmp_path, document) == [
        'device.model: must be a string, got array ["a\\nb"]',
        'eebus."\\n": unknown key',
    ]
    problems = problems_of(tmp_path, patched(minimal_document(), {"eebus.a\u2028b": 1}))
    assert problems == ['eebus."a\\u2028b": unknown key']


# --------------------------------------------------------------------------- reading the file


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert caught.value.problems == [f"{tmp_path / 'nope.toml'}: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [f"{tmp_path}: is a directory, not a config file"]


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[device]\nbrand = "B"\nmodel = \n')

    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'bridge.toml'}: invalid TOML: ")
    assert "line 3, column 9" in problems[0]


def test_not_utf8(tmp_path: Path) -> None:
    assert problems_of(tmp_path, b'[device]\nbrand = "\xff"\n') == [
        f"{tmp_path / 'bridge.toml'}: not UTF-8 text (bad byte at offset 18)"
    ]


def test_empty_file_lists_what_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert problems_of(tmp_path, "") == [
        "device: required table [device] is missing",
        'sidecar.binary: "eebus_grpc_api" was not found on PATH; give its path, '
        "or set sidecar.manage = false when something else starts the sidecar",
        "output: at least one [[output]] table is required",
    ]


# --------------------------------------------------------------------------- SKIs


def test_skis_are_normalised_and_duplicates_folded_in_first_order(tmp_path: Path) -> None:
    colons = ":".join(OTHER_SKI[i : i + 2] for i in range(0, 40, 2)).upper()
    spaced = " ".join(SKI[i : i + 4] for i in range(0, 40, 4)).upper()
    document = patched(
        minimal_document(), {"eebus.ems_ski_allowlist": [colons, SKI, OTHER_SKI, spaced]}
    )

    assert load_config(write(tmp_path, document)).config.eebus.ems_ski_allowlist == (
        OTHER_SKI,
        SKI,
    )


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "bridge"
    folder.mkdir(parents=True)
    make_executable(tmp_path / "bin" / "sidecar")
    (folder / "ca.pem").write_text("ca")
    document = patched(
        minimal_document(),
        {
            "sidecar": {
                "manage": True,
                "binary": "../../bin/sidecar",
                "certificate": "certs/device.crt",  # certs/ does not exist yet: creatable
                "private_key": str(tmp_path / "abs.key"),
            },
            "lpc.state_file": "state/lpc.json",
            "output": [
                {"type": "jsonl", "path": "log/limits.jsonl"},
                {
                    **MQTT,
                    "transport": "unix",
                    "path": "../run/mqtt.sock",
                    "tls": {"ca_file": "ca.pem"},
                },
            ],
        },
    )
    monkeypatch.chdir(tmp_path)  # somewhere else than the config folder
    config = load_config(write(folder, document)).config

    assert config.sidecar.binary == str(tmp_path / "bin" / "sidecar")
    assert config.sidecar.certificate == folder / "certs" / "device.crt"
    assert config.sidecar.private_key == tmp_path / "abs.key"
    assert config.lpc.state_file == folder / "state" / "lpc.json"
    jsonl, mqtt = config.outputs
    assert jsonl == JsonlOutput(path=folder / "log" / "limits.jsonl")
    assert isinstance(mqtt, EverestApiOutput)
    assert mqtt.path == tmp_path / "etc" / "run" / "mqtt.sock"
    assert mqtt.tls == MqttTls(ca_file=folder / "ca.pem")
    assert not (folder / "certs").exists()  # checking never creates anything


def test_bare_binary_name_is_looked_up_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = make_executable(tmp_path / "bin" / "eebus_grpc_api")
    monkeypatch.setenv("PATH", str(program.parent))
    document = patched(minimal_document(), {"sidecar.manage": True})

    assert load_config(write(tmp_path, document)).config.sidecar.binary == str(program)


def test_bare_binary_name_missing_from_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    document = patched(minimal_document(), {"sidecar.manage": True})

    assert problems_of(tmp_path, document) == [
        'sidecar.binary: "eebus_grpc_api" was not found on PATH; give its path, '
        "or set sidecar.manage = false when something else starts the sidecar"
    ]


def test_unmanaged_sidecar_binary_need_not_exist(tmp_path: Path) -> None:
    document = patched(minimal_document(), {"sidecar.binary": "opt/missing"})

    assert load_config(write(tmp_path, document)).config.sidecar.binary == str(
        tmp_path / "opt" / "missing"
    )


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        (lambda p: None, "{p} does not exist"),
        (lambda p: p.mkdir(), "{p} is not a file"),
        (lambda p: p.write_text("x"), "{p} is not executable"),
    ],
    ids=["missing", "directory", "not executable"],
)
def test_managed_sidecar_binary_must_be_executable(
    tmp_path: Path, prepare: Any, expected: str
) -> None:
    program = tmp_path / "sidecar"
    prepare(program)
    document = patched(minimal_document(), {"sidecar": {"binary": "./sidecar"}})

    assert problems_of(tmp_path, document) == ["sidecar.binary: " + expected.format(p=program)]


def test_files_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    (tmp_path / "folder").mkdir()
    document = patched(
        minimal_document(),
        {
            "sidecar.certificate": "blocker/sub/eebus.crt",
            "sidecar.private_key": "folder",
            "lpc.state_file": "blocker/state.json",
            "output": [
                {"type": "jsonl", "path": "folder"},
                {**MQTT, "tls": {"ca_file": "missing.pem", "cert_file": "folder"}},
            ],
        },
    )
    blocker, folder = tmp_path / "blocker", tmp_path / "folder"

    assert problems_of(tmp_path, document) == [
        f"sidecar.certificate: cannot create {blocker}/sub/eebus.crt: {blocker} is not a directory",
        f"sidecar.private_key: {folder} is a directory",
        f"lpc.state_file: cannot create {blocker}/state.json: {blocker} is not a directory",
        f"output[0].path: {folder} is a directory",
        f"output[1].tls.ca_file: {tmp_path}/missing.pem does not exist",
        f"output[1].tls.cert_file: {folder} is not a file",
    ]


def test_a_file_name_with_a_newline_is_quoted(tmp_path: Path) -> None:
    document = patched(minimal_document(), {"output[0]": {**MQTT, "tls": {"ca_file": "a\nb"}}})

    assert problems_of(tmp_path, document) == [
        f'output[0].tls.ca_file: "{tmp_path}/a\\nb" does not exist'
    ]


# --------------------------------------------------------------------------- warnings


def warnings_of(folder: Path, patches: dict[str, Any]) -> tuple[str, ...]:
    return load_config(write(folder, patched(minimal_document(), patches))).warnings


def test_timing_that_differs_from_the_spec_warns(tmp_path: Path) -> None:
    assert warnings_of(
        tmp_path, {"lpc.timing": {"heartbeat_timeout_s": 3, "write_window_s": 0.5}}
    ) == (
        "lpc.timing.heartbeat_timeout_s = 3 differs from the spec value 120 s; "
        "use only for tests and simulations",
        "lpc.timing.write_window_s = 0.5 differs from the spec value 60 s; "
        "use only for tests and simulations",
    )
    assert warnings_of(tmp_path, {"lpc.timing": {"heartbeat_timeout_s": 120}}) == ()


def test_heartbeat_timeout_above_62_warns(tmp_path: Path) -> None:
    assert warnings_of(tmp_path, {"eebus.heartbeat_timeout_s": 62}) == ()
    assert warnings_of(tmp_path, {"eebus.heartbeat_timeout_s": 120}) == (
        "eebus.heartbeat_timeout_s = 120 makes the sidecar send our heartbeat only every 118 s; "
        "the spec wants it at least every 60 s [LPC-TS-007], so use at most 62",
    )


def test_accepting_unknown_ems_warns(tmp_path: Path) -> None:
    (warning,) = warnings_of(tmp_path, {"eebus.accept_unknown_ems": True})
    assert warning.startswith("eebus.accept_unknown_ems = true: any EMS")
    (warning,) = warnings_of(tmp_path, {"eebus.ems_ski_allowlist": []})
    assert warning.startswith("eebus.ems_ski_allowlist is empty and accept_unknown_ems is false")


def test_private_key_readable_by_others_warns(tmp_path: Path) -> None:
    key = tmp_path / "eebus.key"
    key.write_text("secret")
    key.chmod(0o644)
    assert warnings_of(tmp_path, {}) == (
        f"sidecar.private_key: {key} is readable by group or others (mode 0644); chmod 600 it",
    )
    key.chmod(0o600)
    assert warnings_of(tmp_path, {}) == ()


def test_slow_communication_check_and_useless_failsafe_warn(tmp_path: Path) -> None:
    warnings = warnings_of(
        tmp_path,
        {
            "output[0]": {**MQTT, "communication_check_s": 5},
            "lpc.failsafe_limit_W": 40000,
        },
    )
    assert [warning.split(" ")[0] for warning in warnings] == [
        "lpc.failsafe_limit_W",
        "output[0].communication_check_s",
    ]


# --------------------------------------------------------------------------- effective config


def test_effective_config_round_trips_through_toml(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    document = patched(
        minimal_document(),
        {
            "eebus.ems_ski_allowlist": [SKI.upper(), OTHER_SKI],
            "lpc.timing.init_timeout_s": 7.5,
            "output": [
                {"type": "jsonl"},
                {"type": "jsonl", "path": "out.jsonl"},
                {**MQTT, "username": "u", "password": 'p"w', "tls": {"ca_file": "ca.pem"}},
                {**LEGACY, "transport": "unix", "path": "/run/mosquitto.sock"},
                {**RPC, "evse_indices": [0, 3], "split": "equal", "unlimited_power_W": 7400},
            ],
        },
    )
    config = load_config(write(tmp_path, document)).config

    text = dump_toml(config_to_toml_dict(config, hide_secrets=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = load_config(write(elsewhere, text)).config

    assert tomllib.loads(text) == config_to_toml_dict(config, hide_secrets=False)
    assert attrs.evolve(again, source=None) == attrs.evolve(config, source=None)
    assert '[[output]]\ntype = "jsonl"\npath = "-"\n' in text
    assert '\n[output.tls]\nca_file = "' in text
    assert config_to_toml_dict(config)["output"][2]["password"] == "<hidden>"


def test_dump_toml_writes_what_tomllib_reads() -> None:
    document = {
        "": 1,
        "a b": {"c.d": [1, 2.5, "x"], "e": {"f": True}},
        'quote"\\\n\t\x7f\u2028': "\x00\x1f\U0001f600 \U000e0001",
        "list": [[], [{"x": 1}], {"y": -0.0}],
        "tables": [{"t": 1, "sub": {"u": 2}}, {}],
        "big": 1e300,
        "floats": [float("inf"), float("-inf")],
        "when": [date(1, 2, 3), time(4, 5, 6, 7), datetime(2026, 11, 27, 13, 0, 0, 123000)],
    }
    assert tomllib.loads(dump_toml(document)) == document


# --------------------------------------------------------------------------- robustness

_REAL_KEYS = sorted(
    {
        field.name
        for cls in (*OUTPUT_TYPES.values(), DeviceConfig, EebusConfig)
        for field in attrs.fields(cls)
    }
    | {
        field.name
        for cls in (SidecarConfig, LpcConfig, LpcTiming, MqttTls)
        for field in attrs.fields(cls)
    }
    | {"device", "eebus", "sidecar", "lpc", "output", "timing", "tls"}
)
_keys = st.one_of(st.sampled_from(_REAL_KEYS), st.text(max_size=6))
_scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=70000),
    st.floats(),
    st.text(max_size=12),
    st.dates() | st.times() | st.datetimes(),
    st.sampled_from(
        [
            "-",
            "spec",
            "stay",
            "tcp",
            "unix",
            "jsonl",
            "everest-api",
            "rpcapi",
            "ws://h",
            SKI,
            "/",
            ".",
            "sh",
        ]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=10,
)
_tables = st.dictionaries(_keys, _values, max_size=5)
_outputs = st.lists(
    st.builds(
        lambda kind, rest: {"type": kind, **rest}, st.sampled_from([*OUTPUT_TYPES, "x"]), _tables
    ),
    max_size=3,
)
_random_documents = st.fixed_dictionaries(
    {},
    optional={
        "device": _tables | _values,
        "eebus": _tables,
        "sidecar": _tables,
        "lpc": _tables,
        "output": _outputs | _values,
        "extra": _values,
    },
)
_REAL_KEY_PATHS = [
    f"{section}.{field.name}"
    for section, cls in (
        ("device", DeviceConfig),
        ("eebus", EebusConfig),
        ("sidecar", SidecarConfig),
        ("lpc", LpcConfig),
    )
    for field in attrs.fields(cls)
] + [f"lpc.timing.{field.name}" for field in attrs.fields(LpcTiming)]
_one_bad_value = st.builds(
    lambda path, value: patched(minimal_document(), {path: value}),
    st.sampled_from(_REAL_KEY_PATHS),
    _values,
)
_VALID_TEXT = dump_toml(minimal_document())
_damaged_text = st.builds(
    lambda at, cut, insert: _VALID_TEXT[:at] + insert + _VALID_TEXT[at + cut :],
    st.integers(0, len(_VALID_TEXT)),
    st.integers(0, 5),
    st.text(max_size=8),
)
_any_input = st.one_of(
    _random_documents,
    _one_bad_value,
    _damaged_text,
    st.text(max_size=200),
    st.binary(max_size=200),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_any_input)
def test_any_input_gives_a_config_or_one_line_problems(document: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), document)
        try:
            loaded: LoadedConfig | None = load_config(path)
            problems: list[str] = []
        except ConfigError as exc:
            loaded, problems = None, exc.problems
    if loaded is None:
        assert isinstance(problems, list)
        assert problems
        for problem in problems:
            assert isinstance(problem, str)
            assert problem.strip()
            assert len(problem.splitlines()) == 1, problem
    else:
        assert isinstance(loaded.config, Config)
        assert os.path.isabs(loaded.config.lpc.state_file)


# --------------------------------------------------------------------------- grpc_transport


def test_grpc_transport_defaults_to_grpclib_and_takes_grpcio(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, minimal_document())).config.eebus.grpc_transport == (
        "grpclib"
    )
    document = patched(minimal_document(), {"eebus.grpc_transport": "grpcio"})
    assert load_config(write(tmp_path, document)).config.eebus.grpc_transport == "grpcio"


def test_grpc_transport_names_its_choices(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, patched(minimal_document(), {"eebus.grpc_transport": "h2"}))
    assert len(problems) == 1
    assert problems[0].startswith("eebus.grpc_transport")
    assert "grpclib" in problems[0]
    assert "grpcio" in problems[0]


def test_grpcio_without_the_package_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # grpcio is installed wherever the tests run (the test extra); hide it from the lookup.
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else find_spec(name)
    )
    problems = problems_of(
        tmp_path, patched(minimal_document(), {"eebus.grpc_transport": "grpcio"})
    )
    assert problems == [
        "eebus.grpc_transport: 'grpcio' needs the grpcio package, which is not installed "
        "(pip install 'eebus-bridge[grpcio]'), or use 'grpclib'"
    ]
