"""`eebus-bridge status -c FILE [--json]` against a running bridge: exit 0, 1, 3 (and 2)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from eebus_bridge.cli import main
from tests._bridge_fixtures import EG_SKI, write_config
from tests._broker import free_port
from tests._status_fixtures import status_bridge, wait_for_status
from tests.test_cli import root_logger
from tools.hems_simulator import open_simulator_process

TOKEN = "cli-test-token-0123456789"

# main() sets up process-wide logging; every test calling it restores the root logger.
pytestmark = pytest.mark.usefixtures(root_logger.__name__)


async def run_cli(*args: str) -> int:
    """The CLI in a worker thread: it blocks on its request while the bridge answers here."""
    return await trio.to_thread.run_sync(main, ["status", *args])


async def test_status_of_a_healthy_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {"listen": f"127.0.0.1:{free_port()}", "token": TOKEN}
    async with status_bridge(tmp_path, status=status, actions=None, time_scale=0.1) as run:
        await wait_for_status(run, lambda s: s["state"] == "Limited" and s["healthy"])
        config = str(tmp_path / "bridge.toml")
        capsys.readouterr()
        text_code = await run_cli("-c", config)
        text = capsys.readouterr().out
        json_code = await run_cli("-c", config, "--json")
        data = json.loads(capsys.readouterr().out)

    assert text_code == 0
    assert ": healthy" in text.splitlines()[0]
    assert "state         Limited since" in text
    assert "limit         100 W until" in text
    assert f"energy guard  {EG_SKI}, heartbeat" in text
    assert "failsafe      4200 W, 2 h 0 min" in text
    assert json_code == 0
    assert data["state"] == "Limited"
    assert data["energy_managers"][0]["ski"] == EG_SKI

    # The bridge has stopped: nothing answers any more.
    assert await run_cli("-c", config) == 3
    assert "eebus-bridge is not running" in capsys.readouterr().err


async def test_status_of_an_unhealthy_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = free_port()  # an MQTT output whose broker is not there
    output = f"""
        [[output]]
        type = "everest-legacy-api"
        evse_manager_id = "evse_manager"
        port = {nobody}
    """
    status = {"listen": f"127.0.0.1:{free_port()}"}
    config = {"jsonl": None, "extra_outputs": output}
    async with status_bridge(tmp_path, status=status, config=config) as run:
        await wait_for_status(run, lambda s: any("disconnected" in r for r in s["reasons"]))
        capsys.readouterr()
        code = await run_cli("-c", str(tmp_path / "bridge.toml"))
    out = capsys.readouterr().out

    assert code == 1
    assert ": UNHEALTHY" in out.splitlines()[0]
    assert "output        everest-legacy-api[evse_manager]: DISCONNECTED" in out
    assert "problem       output everest-legacy-api[evse_manager] is disconnected" in out


async def test_status_without_an_address_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, grpc_port=50051, status={"listen": ""})
    assert await run_cli("-c", str(config)) == 2
    assert "switched off" in capsys.readouterr().err

    config = write_config(tmp_path, grpc_port=50051, status={"listen": "127.0.0.1:0"})
    assert await run_cli("-c", str(config)) == 2
    assert "picks a port at start" in capsys.readouterr().err


async def _cli_process(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "eebus_bridge", "status", "-c", str(config), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_real_processes_status_then_sigterm_with_a_stalled_client(tmp_path: Path) -> None:
    """`eebus-bridge run` and `eebus-bridge status` as processes; SIGTERM still ends the
    bridge promptly while an HTTP client is stuck not reading a large response."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        "[eg]\nconnect_delay_s = 0.1\nheartbeat_period_s = 0.3\n"
        '[[actions]]\nat_s = 0.3\naction = "send_limit"\nvalue = 2000.0\nactive = true\n'
    )
    async with open_simulator_process(tmp_path, scenario=scenario, control=False) as sim:
        port = free_port()
        config = write_config(
            tmp_path,
            grpc_port=sim.port,
            timing={"init_timeout_s": 30.0},
            status={"listen": f"127.0.0.1:{port}"},
        )
        with open(tmp_path / "bridge.log", "wb") as log:  # noqa: ASYNC230 - tiny setup file
            bridge = await trio.lowlevel.open_process(
                [sys.executable, "-m", "eebus_bridge", "run", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stalled = socket.socket()
        try:
            with trio.fail_after(30):
                while True:
                    done = await _cli_process(config, "--json")
                    if done.returncode == 0 and json.loads(done.stdout)["state"] == "Limited":
                        break
                    await trio.sleep(0.2)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", port))
            stalled.sendall(b"GET / HTTP/1.1\r\nHost: bridge\r\n\r\n" * 60)
            await trio.sleep(0.5)  # let the bridge get stuck sending
            began = trio.current_time()
            bridge.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                code = await bridge.wait()
            took = trio.current_time() - began
        finally:
            stalled.close()
            if bridge.returncode is None:
                bridge.kill()
                await bridge.wait()
        not_running = await _cli_process(config)

    log_text = (tmp_path / "bridge.log").read_text()
    assert code == 0, log_text
    assert took < 2.5, log_text
    assert f"status page on http://127.0.0.1:{port}" in log_text
    assert not_running.returncode == 3
    assert b"not running" in not_running.stderr
