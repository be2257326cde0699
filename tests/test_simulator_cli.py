"""The simulator as a drop-in sidecar process: flags, output, signals, exit codes, records."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from eebus_bridge.generated.common_types import EntityAddress, LoadLimit
from eebus_bridge.generated.control_service import AddUseCaseRequest, ControlServiceStub
from eebus_bridge.generated.cs_lpc import ApproveOrDenyConsumptionLimitRequest
from eebus_bridge.island import open_island
from tests._sim_fixtures import (
    LPC_USE_CASE,
    aio,
    event_stream,
    hems_sim_process,
    hems_sim_process_factory,
    lpc_handshake,
    open_grpc_channel,
    open_stream,
    valid_config,
)
from tools.hems_simulator import SimulatorProcess
from tools.hems_simulator.cli import FlagError, main, parse_flags
from tools.hems_simulator.process import REPO_ROOT, SIM_EXECUTABLE, open_simulator_process

__all__ = ["hems_sim_process", "hems_sim_process_factory"]

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) \S")


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with open_island():
        yield


async def test_real_flags_only_reachable_within_1_s(tmp_path: Path) -> None:
    started = time.monotonic()
    async with open_simulator_process(
        tmp_path, scenario=None, control=False, record=False
    ) as process:
        elapsed = time.monotonic() - started
        print(f"simulator reachable {elapsed * 1000:.0f} ms after spawn")
        assert elapsed < 5.0  # the target is < 1 s; generous here for loaded CI machines
        assert process.args[1:] == [
            "-port",
            str(process.port),
            "-certificate-path",
            str(tmp_path / "sim-cert.pem"),
            "-private-key-path",
            str(tmp_path / "sim-key.pem"),
        ]
        await process.wait_for_line(f"Control service listening on 127.0.0.1:{process.port}")
        key_mode = stat.S_IMODE(process.key_path.stat().st_mode)
        assert key_mode == 0o644  # what the real sidecar writes (spec/wire.md)
        assert "-----BEGIN CERTIFICATE-----" in process.cert_path.read_text()
        assert "-----BEGIN EC PRIVATE KEY-----" in process.key_path.read_text()
        returncode = await process.stop()
    assert returncode == 0
    lines = process.stdout_lines
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert lines[0].endswith(f"INFO Certificate path: {process.cert_path}")
    assert lines[1].endswith(f"INFO Private key path: {process.key_path}")
    assert lines[2].endswith(f"INFO Port: {process.port}")
    assert lines[-1].endswith("INFO Received SIGTERM, shutting down")


async def test_controlbox_as_subprocess(aio_loop: None, tmp_path: Path) -> None:
    async with open_simulator_process(tmp_path, extra_args=["-time-scale", "0.02"]) as process:
        limit = await _drive_controlbox(process)
        assert (limit.value, limit.is_active) == (100.0, True)
        assert abs(limit.duration_nanoseconds / 1e9 - 3723) <= 1
        status = await process.control.call("status")
        assert status["lpc"]["limit"]["value"] == 100
        approval = await process.wait_for_record(kind="approval")
        assert (approval["approve"], approval["auto_rejected"]) == (True, False)
        assert approval["limit"] == {
            "value": 100.0,
            "is_active": True,
            "duration_nanoseconds": 3723 * 10**9,
        }
    methods = [entry["method"] for entry in process.records("rpc")]
    assert methods[:3] == ["SetConfig", "StartSetup", "AddUseCase"]
    assert {"SubscribeUseCaseEvents", "StartService", "cs_lpc.StartHeartbeat"} <= set(methods)
    assert "cs_lpc.ApproveOrDenyConsumptionLimit" in methods
    set_config = process.records("rpc")[0]
    assert set_config["ok"] is True
    assert set_config["error"] is None
    assert set_config["request"]["device_type"] == "CHARGING_STATION"
    assert {"t", "mono", "wall"} <= set(set_config)
    events = [entry["name"] for entry in process.records("event")]
    assert events.count("DataUpdateLimit") == 1


async def _drive_controlbox(process: SimulatorProcess) -> LoadLimit:
    async with open_grpc_channel(process.port) as channel:
        control = ControlServiceStub(channel)
        async with lpc_handshake(control) as lpc, open_stream(event_stream(control)) as events:
            await aio(control.start_service)()
            await aio(lpc.start_heartbeat)()
            with trio.fail_after(10):
                async for event in events:
                    assert not isinstance(event, BaseException), event
                    name = event.use_case_event.event
                    if name == "WriteApprovalRequired":
                        pending = (await aio(lpc.pending_consumption_limit)()).load_limits
                        for counter in pending:
                            await aio(lpc.approve_or_deny_consumption_limit)(
                                ApproveOrDenyConsumptionLimitRequest(counter, True, "")
                            )
                    elif name == "DataUpdateLimit":
                        limit = (await aio(lpc.consumption_limit)()).load_limit
                        assert limit is not None
                        return limit
    raise AssertionError("the event stream ended")


async def test_auto_rejection_and_live_control_in_subprocess(
    aio_loop: None, tmp_path: Path
) -> None:
    args = ["-approval-timeout", "0.3", "-connect-delay", "0"]
    async with (
        open_simulator_process(tmp_path, scenario="manual", extra_args=args) as process,
        open_grpc_channel(process.port) as channel,
    ):
        control = ControlServiceStub(channel)
        async with lpc_handshake(control):
            await aio(control.start_service)()
            await process.wait_for_record(
                kind="event", predicate=lambda e: e["name"] == "UseCaseSupportUpdate"
            )
            sent = await process.control.call("send_limit", value=700, duration_s=10)
            approval = await process.wait_for_record(kind="approval")
    assert approval["msg_counter"] == sent["msg_counter"]
    assert (approval["approve"], approval["auto_rejected"]) == (False, True)
    assert approval["reason"] == "write not approved in time by application"
    write = next(e for e in process.records("event") if e["name"] == "WriteApprovalRequired")
    assert 0.25 <= approval["mono"] - write["mono"] < 2.0


async def test_sigterm_is_ignored_once_running_with_the_flag(
    aio_loop: None, hems_sim_process_factory: Callable[..., Awaitable[SimulatorProcess]]
) -> None:
    process = await hems_sim_process_factory(extra_args=["-ignore-sigterm"])
    async with open_grpc_channel(process.port) as channel:
        control = ControlServiceStub(channel)
        async with lpc_handshake(control):
            await aio(control.start_service)()
    process.signal_group(signal.SIGTERM)
    await process.wait_for_line("Ignoring SIGTERM")
    with trio.move_on_after(0.5):
        await process.wait()
    assert process.returncode is None
    process.signal_group(signal.SIGINT)
    with trio.fail_after(5):
        assert await process.wait() == 0


async def test_unknown_entity_crashes_the_process_with_status_2(
    aio_loop: None, hems_sim_process: SimulatorProcess
) -> None:
    process = hems_sim_process
    async with open_grpc_channel(process.port) as channel:
        control = ControlServiceStub(channel)
        await aio(control.set_config)(valid_config())
        await aio(control.start_setup)()
        request = AddUseCaseRequest(
            entity_address=EntityAddress(entity_address=[7]), use_case=LPC_USE_CASE
        )
        with pytest.raises(Exception):  # noqa: B017, PT011 - the connection just drops
            await aio(control.add_use_case)(request, timeout=5)
    with trio.fail_after(5):
        assert await process.wait() == 2
    await process.wait_for_line(r"FATAL panic: runtime error: invalid memory address")
    await process.wait_for_line(r"^panic: ", stream="stderr")
    crash = process.records("rpc")[-1]
    assert crash["method"] == "AddUseCase"
    assert crash["error"].startswith("crash: ")


def test_start_errors_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-port", "1"]) == 1
    assert "ERROR No certificate path provided" in capsys.readouterr().out
    assert main(["-certificate-path", str(tmp_path / "c")]) == 1
    assert "ERROR No private key path provided" in capsys.readouterr().out
    assert main(["-bogus"]) == 2
    assert "flag provided but not defined: -bogus" in capsys.readouterr().err
    assert main(["-port", "x"]) == 2
    assert 'invalid value "x" for flag -port' in capsys.readouterr().err
    paths = ["-certificate-path", str(tmp_path / "c"), "-private-key-path", str(tmp_path / "k")]
    assert main([*paths, "-scenario", "nope"]) == 2
    assert "ERROR Scenario: unknown scenario 'nope'" in capsys.readouterr().out
    assert main([*paths, "-log-level", "loud"]) == 2
    assert main(["-help"]) == 0
    assert "-control-port int" in capsys.readouterr().err


def test_go_style_flags() -> None:
    assert parse_flags(["-port", "5", "--certificate-path=/c", "-ignore-sigterm", "-x=1"][:4]) == {
        "port": 5,
        "certificate-path": "/c",
        "ignore-sigterm": True,
    }
    assert parse_flags(["--port=7", "-legacy-v010=false", "rest", "-port", "9"]) == {
        "port": 7,
        "legacy-v010": False,
    }
    assert parse_flags(["-time-scale", "0.5", "--", "-port", "1"]) == {"time-scale": 0.5}
    with pytest.raises(FlagError, match="flag needs an argument: -port"):
        parse_flags(["-port"])


async def test_wrapper_script_picks_the_interpreter_and_execs(tmp_path: Path) -> None:
    fake = tmp_path / "fakepython"
    fake.write_text('#!/bin/sh\necho "$$|$PYTHONPATH|$*"\n')
    fake.chmod(0o755)
    link = tmp_path / "eebus_grpc_api"
    link.symlink_to(SIM_EXECUTABLE)
    env = {**os.environ, "EEBUS_SIM_PYTHON": str(fake), "PYTHONPATH": "/elsewhere"}
    process = await trio.lowlevel.open_process(
        [str(link), "-port", "1"], stdout=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    with trio.fail_after(5):
        output = b""
        while chunk := await process.stdout.receive_some():
            output += chunk
        await process.wait()
    pid, pythonpath, args = output.decode().strip().split("|")
    assert int(pid) == process.pid  # exec: the interpreter is the process we started
    assert pythonpath == f"{REPO_ROOT}:/elsewhere"
    assert args == "-m tools.hems_simulator -port 1"
