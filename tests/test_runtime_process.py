"""`eebus-bridge run` as a real process with the simulator as its managed sidecar subprocess.

What only real processes show: the exact sidecar command line, SIGKILL and SIGSTOP of the sidecar,
SIGTERM of the bridge with a sidecar that ignores SIGTERM, and no child left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from tests._bridge_fixtures import SIMULATOR, write_config
from tests._util import wait_until
from tools.hems_simulator import free_tcp_port

SCENARIO = """
description = "fast control box for process tests"
[eg]
connect_delay_s = 0.1
heartbeat_period_s = 0.3
[sidecar]
heartbeat_window_s = 2.0
[[actions]]
at_s = 0.3
action = "send_limit"
value = 2000.0
active = true
duration_s = 0.0
"""


@attrs.define
class BridgeProcess:
    folder: Path
    process: trio.Process

    @property
    def sidecar_pids(self) -> list[int]:
        path = self.folder / "sidecar.pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def publications(self) -> list[dict[str, Any]]:
        path = self.folder / "publications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def states(self) -> list[str]:
        return [p["state"] for p in self.publications()]

    def records(self, method: str) -> list[dict[str, Any]]:
        path = self.folder / "record.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r.get("kind") == "rpc" and r.get("method") == method]

    def log(self) -> str:
        return (self.folder / "bridge.log").read_text(errors="replace")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@asynccontextmanager
async def bridge_process(
    folder: Path,
    *,
    ignore_sigterm: bool = True,
    timing: dict[str, object] | None = None,
    prelude: str = "",
    output: int | None = None,
    log_level: str = "debug",
) -> AsyncIterator[BridgeProcess]:
    """Start the bridge with a wrapper around the simulator as its managed sidecar.

    The wrapper records each sidecar PID and adds the simulator's own flags after the real ones
    the bridge passes (exactly -port, -certificate-path, -private-key-path). `prelude` is Python
    run in the bridge process before the CLI (to leave threads or exit handlers behind);
    `output` is a file descriptor for the bridge's stdout/stderr instead of bridge.log.
    """
    (folder / "scenario.toml").write_text(SCENARIO)
    wrapper = folder / "sidecar.sh"
    extra = f"-scenario {folder / 'scenario.toml'} -record {folder / 'record.jsonl'}"
    if ignore_sigterm:
        extra += " -ignore-sigterm"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$$" >> {folder / "sidecar.pids"}\n'
        f'echo "$@" >> {folder / "sidecar.args"}\n'
        f'exec {SIMULATOR} "$@" {extra}\n'
    )
    wrapper.chmod(0o755)
    config = write_config(
        folder,
        grpc_port=free_tcp_port(),
        manage=True,
        sidecar={"binary": str(wrapper), "restart_delay_s": 0.2},
        timing={"init_timeout_s": 30.0, **(timing or {})},
    )
    env = {**os.environ, "EEBUS_SIM_PYTHON": sys.executable}
    launcher = ["-m", "eebus_bridge"]
    if prelude:
        launcher = [
            "-c",
            f"{prelude}\nimport sys\nfrom eebus_bridge.cli import main\nsys.exit(main())",
        ]
    with open(folder / "bridge.log", "wb") as log:  # noqa: ASYNC230 - test setup, tiny file
        process = await trio.lowlevel.open_process(
            [sys.executable, *launcher, "--log-level", log_level, "run", "-c", str(config)],
            stdout=log if output is None else output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    handle = BridgeProcess(folder, process)
    try:
        yield handle
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in handle.sidecar_pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_sigterm_shuts_down_within_2_s_and_leaves_no_child(tmp_path: Path) -> None:
    async with bridge_process(tmp_path) as bridge:
        await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
        args = (tmp_path / "sidecar.args").read_text().split()
        assert args[0] == "-port"
        assert args[2:] == [
            "-certificate-path",
            str(tmp_path / "eebus.crt"),
            "-private-key-path",
            str(tmp_path / "eebus.key"),
        ]
        (sidecar,) = bridge.sidecar_pids
        assert _alive(sidecar)
        began = trio.current_time()
        bridge.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            code = await bridge.process.wait()
        took = trio.current_time() - began
        assert code == 0, bridge.log()
        assert took < 2.0 + 0.5  # 2 s budget; the sidecar ignores SIGTERM and needs SIGKILL
        assert not _alive(sidecar)
        assert "SIGTERM received: shutting down" in bridge.log()


async def test_sidecar_sigkill_restarts_it_and_keeps_the_lpc_state(tmp_path: Path) -> None:
    # A heartbeat timeout far above any restart time: this test is about the state surviving
    # the restart, not about the failsafe deadline (a loaded machine may take seconds to start
    # the simulator; with the 2 s test timeout that was a Failsafe, and a red run, by chance).
    async with bridge_process(tmp_path, timing={"heartbeat_timeout_s": 30.0}) as bridge:
        await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
        (first,) = bridge.sidecar_pids
        os.kill(first, signal.SIGKILL)
        # Generous limits: a loaded machine may take seconds to start the (Python) simulator.
        await wait_until(lambda: len(bridge.sidecar_pids) == 2, limit_s=30)
        # The handshake is redone with the new sidecar (its records append to the same file).
        await wait_until(lambda: len(bridge.records("SetConfig")) == 2, limit_s=30)
        await wait_until(lambda: len(bridge.records("StartService")) == 2, limit_s=30)
        # The second handshake writes the CS's view: the limit the EG had set before.
        limit = bridge.records("cs_lpc.SetConsumptionLimit")[-1]["request"]["load_limit"]
        assert limit["value"] == 2000.0
        assert limit["is_active"] is True
        # The state survived: no second Init, no Failsafe (the outage was shorter than 30 s).
        await trio.sleep(1.0)
        assert bridge.states() == ["Init", "Limited"], bridge.log()
        assert bridge.process.returncode is None


async def test_frozen_sidecar_still_gets_failsafe_on_time_and_recovers(tmp_path: Path) -> None:
    async with bridge_process(tmp_path) as bridge:
        await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
        (sidecar,) = bridge.sidecar_pids
        os.kill(sidecar, signal.SIGSTOP)
        frozen_at = trio.current_time()
        try:
            await wait_until(lambda: "Failsafe" in bridge.states(), limit_s=10)
            waited = trio.current_time() - frozen_at
            # 2 s heartbeat timeout after the last heartbeat (<= 0.3 s before the freeze).
            assert 1.5 <= waited <= 2.0 + 1.0, bridge.log()
            # Silence on the event stream -> a probe RPC with a deadline -> the hung sidecar
            # is replaced by a new one.
            await wait_until(lambda: len(bridge.sidecar_pids) == 2, limit_s=15)
        finally:
            with contextlib.suppress(ProcessLookupError):  # already killed by the bridge
                os.kill(sidecar, signal.SIGCONT)
        await wait_until(lambda: not _alive(sidecar), limit_s=5)
        # The new sidecar's EG is back: the bridge leaves Failsafe.
        await wait_until(lambda: bridge.states()[-1] != "Failsafe", limit_s=20)
        assert bridge.states()[:3] == ["Init", "Limited", "Failsafe"]
        assert bridge.states()[3] in ("Limited", "Unlimited/autonomous")
        assert "sidecar connection lost" in bridge.log()
        assert bridge.process.returncode is None


async def test_sigcont_after_a_short_freeze_recovers_without_restart(tmp_path: Path) -> None:
    async with bridge_process(tmp_path) as bridge:
        await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
        (sidecar,) = bridge.sidecar_pids
        os.kill(sidecar, signal.SIGSTOP)
        try:
            await wait_until(lambda: "Failsafe" in bridge.states(), limit_s=10)
        finally:
            os.kill(sidecar, signal.SIGCONT)
        # Heartbeats flow again; no new limit -> Unlimited/autonomous 1.5 s later [LPC-921].
        await wait_until(lambda: bridge.states()[-1] == "Unlimited/autonomous", limit_s=10)
        assert bridge.sidecar_pids == [sidecar]
