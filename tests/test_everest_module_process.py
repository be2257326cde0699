"""End to end: PyEebusBridge installed with the real command and launched like EVerest does it.

The module runs as `<module dir>/.venv/bin/python3 module.py` (no arguments, the manager's
environment, the fake everestpy first on PYTHONPATH) with the HEMS simulator as its managed
sidecar. What EVerest's EnergyNode would receive is what the fake recorded for call_command.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from tests._bridge_fixtures import EG_SKI, SIMULATOR
from tests._everest_module import (
    ModuleProcess,
    alive,
    everest_config,
    group_members,
    install,
    launched_module,
    manager,
    module_dir,
)
from tests._util import wait_until
from tools.hems_simulator import free_tcp_port


def _time(stamp: str) -> datetime:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp[:-1] + "+00:00")


def _config(**changes: Any) -> dict[str, Any]:
    """A module config as an integrator writes it: the four device strings plus changes."""
    return {
        "vendor_code": "TEST",
        "device_brand": "eebus-bridge",
        "device_model": "test-wallbox",
        "serial_number": "SN-1",
        "grpc_port": free_tcp_port(),
        "eebus_ems_ski_allowlist": f" {EG_SKI.upper()} ,",
        "eebus_grpc_api_binary_path": str(SIMULATOR),
        "restart_delay_s": 1,
        **changes,
    }


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """An EVerest prefix with the module installed by `eebus-bridge everest-module install`.

    EEBUS_EVEREST_PREFIX names an existing installation to use instead (the acceptance run:
    install into /tmp/ev, then run this test against it).
    """
    given = os.environ.get("EEBUS_EVEREST_PREFIX")
    if given:
        return Path(given)
    target = tmp_path / "everest"
    result = install(target)
    assert result.returncode == 0, result.stderr
    assert (module_dir(target) / ".venv" / "bin" / "python3").exists()
    return target


async def _sigterm_and_wait(module: ModuleProcess) -> float:
    began = trio.current_time()
    module.process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        code = await module.process.wait()
    assert code == 0, module.output()
    return trio.current_time() - began


async def test_controlbox_limit_reaches_set_external_limits(tmp_path: Path, prefix: Path) -> None:
    env = {"FAKE_EVEREST_READY_DELAY_S": "1.0"}
    async with launched_module(tmp_path, prefix, _config(), env=env) as module:
        await wait_until(lambda: bool(module.watch_sidecars()), limit_s=30)

        def limited() -> list[dict[str, Any]]:
            calls = module.records("call_command")
            return [c for c in calls if len(c["args"]["value"]["schedule_import"]) == 2]

        await wait_until(lambda: bool(limited()), limit_s=40)
        (running,) = module.watch_sidecars()
        took = await _sigterm_and_wait(module)
        # 2 s budget, margin for a loaded machine
        assert took < 2.0 + 0.5, (took, module.output())
        # No sidecar left: the running one and any earlier one (a restart under heavy load).
        assert running in module.sidecars
        for sidecar in module.sidecars:
            assert not alive(sidecar), module.output()
            assert group_members(sidecar) == [], module.output()

    assert module.records("violation") == [], module.output()
    # Nothing before the ready callback: the Init limit waited for it.
    (ready,) = module.records("ready")
    calls = module.records("call_command")
    assert all(call["time"] >= ready["time"] for call in module.records("call_started"))
    assert calls[0]["args"]["value"]["schedule_import"][0]["limits_to_root"] == {
        "total_power_W": {"value": 4200.0, "source": "EEBUS LPC"}
    }
    assert {call["module_id"] for call in calls} == {"grid_connection_point"}
    assert {call["command"] for call in calls} == {"set_external_limits"}
    # The controlbox preset: 100 W now, lifted 3723 s (+-1 s: the sidecar rounds) later.
    value = limited()[0]["args"]["value"]
    first, end = value["schedule_import"]
    power = {"total_power_W": {"value": 100.0, "source": "EEBUS LPC"}}
    assert first["limits_to_root"] == power
    assert first["limits_to_leaves"] == power
    assert end["limits_to_root"] == {}
    assert end["limits_to_leaves"] == {}
    span = (_time(end["timestamp"]) - _time(first["timestamp"])).total_seconds()
    assert abs(span - 3723) <= 1
    assert value["schedule_export"] == []
    assert value["schedule_setpoints"] == []
    # Our logs and the sidecar's lines went through everestpy's log.
    messages = module.logged()
    assert any(m.startswith("eebus_grpc_api: ") for m in messages)
    assert any("SIGTERM received: shutting down" in m for m in messages)
    assert any("sent 100 W until" in m for m in module.logged("info"))


async def test_invalid_config_logs_every_problem_and_stays_idle(
    tmp_path: Path, prefix: Path
) -> None:
    # What the manager lets through (types fine, no key missing) but the module must refuse.
    config = _config(vendor_code="", eebus_ems_ski_allowlist=f"{EG_SKI}, not-an-ski")
    async with launched_module(tmp_path, prefix, config) as module:
        await wait_until(lambda: bool(module.records("ready")), limit_s=30)
        await wait_until(
            lambda: any("invalid module config" in m for m in module.logged("error")), limit_s=10
        )
        errors = module.logged("error")
        assert any("config: vendor_code: must not be empty" in e for e in errors), errors
        assert any(
            "config: eebus_ems_ski_allowlist: entry 2 ('not-an-ski') is not an SKI" in e
            for e in errors
        ), errors
        assert module.records("init_done"), "the manager waits for init_done"
        await trio.sleep(1.0)  # idle means idle: nothing happens while EVerest runs on
        assert module.process.returncode is None, module.output()
        assert module.watch_sidecars() == []
        await _sigterm_and_wait(module)
    assert module.records("call_started") == []
    assert module.records("violation") == []


async def test_sigterm_ends_the_module_while_a_call_blocks(tmp_path: Path, prefix: Path) -> None:
    """The worst case: the callee never answers (everestpy blocks up to 300 s) and the sidecar
    ignores SIGTERM like the real one. The sidecar is a wrapper in the module's folder, named
    by a relative eebus_grpc_api_binary_path (the C++ path rule)."""
    wrapper = module_dir(prefix) / "test-sidecar.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {SIMULATOR} "$@" -ignore-sigterm\n')
    wrapper.chmod(0o755)
    config = _config(eebus_grpc_api_binary_path="test-sidecar.sh")
    env = {"FAKE_EVEREST_COMMAND_DELAY_S": "600"}
    async with launched_module(tmp_path, prefix, config, env=env) as module:
        await wait_until(lambda: bool(module.records("call_started")), limit_s=30)
        await wait_until(
            lambda: any("Service started" in m for m in module.logged()), limit_s=30
        )  # from now on the simulated sidecar ignores SIGTERM
        (sidecar,) = module.watch_sidecars()
        took = await _sigterm_and_wait(module)
        assert took < 2.0 + 0.5, (took, module.output())
        assert not alive(sidecar), module.output()
        assert group_members(sidecar) == []
    assert module.records("call_command") == []  # the one call never returned
    assert module.records("violation") == []


async def test_failed_calls_are_retried_with_backoff(tmp_path: Path, prefix: Path) -> None:
    config = _config(manage_eebus_grpc_api_binary=False)
    env = {"FAKE_EVEREST_COMMAND_FAILURES": "2"}
    async with launched_module(tmp_path, prefix, config, env=env) as module:
        await wait_until(lambda: bool(module.records("call_command")), limit_s=30)
        failed = module.records("call_failed")
        assert len(failed) == 2
        (done,) = module.records("call_command")
        started = [r["time"] for r in module.records("call_started")]
        assert len(started) == 3
        # The delay grows: initial 0.5 s, then doubled (-20 % jitter at most; load only adds).
        assert started[1] - started[0] >= 0.4
        assert started[2] - started[1] >= 0.8
        assert (
            done["args"]["value"]["schedule_import"][0]["limits_to_root"]["total_power_W"]["value"]
            == 4200.0
        )
        errors = module.logged("error")
        assert sum("set_external_limits failed" in e and "retrying in" in e for e in errors) == 2
        assert module.process.returncode is None
        await _sigterm_and_wait(module)


def test_the_manager_refuses_a_missing_mandatory_key_or_a_wrong_type(
    tmp_path: Path, prefix: Path
) -> None:
    config_file = tmp_path / "config.yaml"
    config = _config()
    del config["serial_number"]
    config["grpc_port"] = "50051"
    config_file.write_text(everest_config(config))
    with pytest.raises(manager.ManagerRefused) as refused:
        manager.build_module_setup(config_file, "eebus", prefix)
    text = str(refused.value)
    assert "eebus.config_module.serial_number: mandatory key is missing" in text
    assert "eebus.config_module.grpc_port: '50051' is not of type 'integer'" in text
