"""`eebus-bridge status -c FILE [--json]` against a running bridge: exit 0, 1, 3 (and 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from eebus_bridge.cli import main
from tests._bridge_fixtures import EG_SKI, write_config
from tests._broker import free_port
from tests._status_fixtures import status_bridge, wait_for_status

TOKEN = "cli-test-token-0123456789"


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
