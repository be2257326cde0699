"""The eebus-bridge command line (as a real subprocess) and its logging setup."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from eebus_bridge import __version__, cli
from eebus_bridge.config import dump_toml
from eebus_bridge.logs import setup_logging

REPO = Path(__file__).resolve().parent.parent
SKI = "0123456789abcdef0123456789abcdef01234567"
VALID = {
    "device": {"vendor_code": "V", "brand": "B", "model": "M", "serial_number": "S1"},
    "eebus": {"ems_ski_allowlist": [SKI]},
    "sidecar": {"manage": False},
    "output": [{"type": "jsonl"}],
}


def eebus_bridge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eebus_bridge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def assert_config_errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Exit 2, nothing on stdout, only `error:` lines on stderr; returns the problems."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines
    assert all(line.startswith("error: ") for line in lines), result.stderr
    return [line.removeprefix("error: ") for line in lines]


# --------------------------------------------------------------------------- subprocess


def test_version() -> None:
    result = eebus_bridge("--version")

    assert (result.returncode, result.stdout) == (0, f"eebus-bridge {__version__}\n")


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    document = {**VALID, "lpc": {"timing": {"init_timeout_s": 5}}}
    config = tmp_path / "bridge.toml"
    config.write_text(dump_toml(document))

    result = eebus_bridge("check-config", "-c", config)

    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "warning: lpc.timing.init_timeout_s = 5 differs from the spec value 120 s; "
        "use only for tests and simulations\n"
    )
    assert result.stdout.startswith(f"# effective configuration of {config}\n")
    effective = tomllib.loads(result.stdout)
    assert effective["device"]["brand"] == "B"
    assert effective["eebus"]["grpc_port"] == 50051
    assert effective["lpc"]["state_file"] == str(tmp_path / "state.json")
    assert effective["lpc"]["timing"]["init_timeout_s"] == 5.0
    assert effective["output"] == [{"type": "jsonl", "path": "-"}]


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[device]\nvendor_code = "V"\nbrand = "B"\nmodel = "M"\n'
        '[eebus]\ngrpc_port = "8080"\nship_port = 0\n[sidecar]\nmanage = false\n'
    )

    assert assert_config_errors(eebus_bridge("check-config", "-c", config)) == [
        "device.serial_number: required key is missing",
        "eebus.ship_port: must be between 1 and 65535, got 0",
        'eebus.grpc_port: must be an integer, got string "8080"',
        "output: at least one [[output]] table is required",
    ]


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"

    assert assert_config_errors(eebus_bridge("check-config", "-c", missing)) == [
        f"{missing}: no such file"
    ]


def test_directory_as_config_file(tmp_path: Path) -> None:
    assert assert_config_errors(eebus_bridge("check-config", "--config", tmp_path)) == [
        f"{tmp_path}: is a directory, not a config file"
    ]


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[device]\nbrand = "unterminated\n')

    (problem,) = assert_config_errors(eebus_bridge("check-config", "-c", config))

    assert problem.startswith(f"{config}: invalid TOML: ")
    assert re.search(r"line 2, column \d+", problem), problem


def test_garbage_bytes_exit_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_bytes(b'output = [{type = "rpcapi", url = 7}, 5]\n[device]\n"\x00" = [1, {}]')

    (problem,) = assert_config_errors(eebus_bridge("check-config", "-c", config))
    assert "invalid TOML" in problem
    assert "Traceback" not in problem


def test_random_document_exit_2_without_traceback(tmp_path: Path) -> None:
    # Shaped like the hypothesis examples in test_config.py: wrong types at every level.
    config = tmp_path / "bridge.toml"
    document = {
        "device": [1, "x"],
        "eebus": {"ems_ski_allowlist": [{}], "": 1.5},
        "sidecar": {"manage": False},
        "lpc": {"timing": [], "state_file": "/"},
        "output": [{"type": "everest-api", "tls": {"ca_file": "\n"}}, {"type": True}],
    }
    config.write_text(dump_toml(document))

    problems = assert_config_errors(eebus_bridge("check-config", "-c", config))

    assert problems == [
        'device: must be a table, got array [1, "x"]',
        "eebus.ems_ski_allowlist[0]: must be a string, got a table",
        'eebus."": unknown key',
        "lpc.timing: must be a table, got array []",
        "output[0].module_id: required key is missing",
        'output[1].type: must be one of "jsonl", "everest-api", "everest-legacy-api", "rpcapi", '
        "got boolean true",
    ]


def test_run_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[device]\n")

    problems = assert_config_errors(eebus_bridge("run", "-c", config))
    assert "device.brand: required key is missing" in problems


def test_usage_errors_exit_2() -> None:
    assert eebus_bridge().returncode == 2
    assert eebus_bridge("check-config").returncode == 2
    assert eebus_bridge("--log-level", "loud", "check-config", "-c", "x").returncode == 2


@pytest.mark.parametrize(
    "config", sorted((REPO / "configs").glob("*.toml")), ids=lambda path: path.name
)
def test_shipped_configs_pass_check_config(config: Path) -> None:
    result = eebus_bridge("check-config", "-c", config)

    assert result.returncode == 0, result.stderr
    assert all(line.startswith("warning: ") for line in result.stderr.splitlines())
    assert tomllib.loads(result.stdout)["output"]


def test_there_are_three_shipped_configs() -> None:
    names = {path.name for path in (REPO / "configs").glob("*.toml")}
    assert {"demo.toml", "everest-mqtt.toml", "everest-rpcapi.toml"} <= names


# --------------------------------------------------------------------------- in process


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (setup_logging changes process-wide state)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_unexpected_error_exits_1_and_is_logged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root_logger: logging.Logger,
) -> None:
    def broken_loader(path: Path) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "load_config", broken_loader)

    assert cli.main(["--log-format", "json", "check-config", "-c", str(tmp_path)]) == 1
    record = json.loads(capsys.readouterr().err.splitlines()[0])
    assert (record["level"], record["logger"]) == ("ERROR", "eebus_bridge.cli")
    assert "RuntimeError: disk on fire" in record["exception"]


def test_logging_options_are_accepted_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logger: logging.Logger
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(dump_toml(VALID))

    assert cli.main(["check-config", "-c", str(config), "--log-level", "debug"]) == 0
    assert root_logger.level == logging.DEBUG
    assert capsys.readouterr().err == ""


def test_text_log_line(capsys: pytest.CaptureFixture[str], root_logger: logging.Logger) -> None:
    setup_logging("info", "text")
    logging.getLogger("eebus_bridge.lpc").info("limit %d W", 4200, extra={"fields": {"ski": "ab"}})
    logging.getLogger("eebus_bridge.lpc").debug("not shown at info")

    line = capsys.readouterr().err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO eebus_bridge\.lpc: limit 4200 W\n", line
    ), line


def test_json_log_line_merges_fields(
    capsys: pytest.CaptureFixture[str], root_logger: logging.Logger
) -> None:
    setup_logging("warning", "json")
    log = logging.getLogger("eebus_bridge.lpc")
    log.info("hidden")
    log.warning("denied", extra={"fields": {"limit_W": 100.0, "level": "not this"}})

    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record.pop("time"))
    assert record == {
        "level": "WARNING",
        "logger": "eebus_bridge.lpc",
        "message": "denied",
        "limit_W": 100.0,
    }


def test_setup_logging_twice_keeps_one_handler(
    capsys: pytest.CaptureFixture[str], root_logger: logging.Logger
) -> None:
    before = len(root_logger.handlers)
    setup_logging("info", "text")
    setup_logging("debug", "json")

    assert len(root_logger.handlers) == before + 1
    logging.getLogger("x").debug("once")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "once"
