"""Launching the PyEebusBridge module the way EVerest's manager does, against the fake everestpy.

`install(prefix)` runs the real install command; `launched_module(...)` first lets the fake
manager build the module's setup (a refused config never starts a process, as in EVerest), then
starts `<module dir>/.venv/bin/python3 module.py` with no arguments, the manager's environment
and the fake first on PYTHONPATH, and yields a handle to its records, log and sidecar children.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import yaml

from tests._bridge_fixtures import ROOT

FAKE_EVEREST = ROOT / "tests" / "fake_everest"
if str(FAKE_EVEREST) not in sys.path:
    sys.path.insert(0, str(FAKE_EVEREST))

import fake_everest_manager as manager  # noqa: E402 - found through the path set just above

MODULE_ID = "eebus"
ENERGY_NODE = "grid_connection_point"

__all__ = ["manager"]


def install(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`eebus-bridge everest-module install --prefix PREFIX ...` as a user runs it."""
    command = [sys.executable, "-m", "eebus_bridge", "everest-module", "install"]
    return subprocess.run(
        [*command, "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def module_dir(prefix: Path, name: str = "PyEebusBridge") -> Path:
    return prefix / "libexec" / "everest" / "modules" / name


def everest_config(config_module: Mapping[str, Any], *, module: str = "PyEebusBridge") -> str:
    """An EVerest config.yaml with our module wired to an EnergyNode."""
    document = {
        "active_modules": {
            ENERGY_NODE: {
                "module": "EnergyNode",
                "config_module": {"fuse_limit_A": 32.0, "phase_count": 3},
            },
            MODULE_ID: {
                "module": module,
                "config_module": dict(config_module),
                "connections": {
                    "eebus_energy_sink": [
                        {"module_id": ENERGY_NODE, "implementation_id": "external_limits"}
                    ]
                },
            },
        }
    }
    return yaml.safe_dump(document, sort_keys=False)


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, pgrp, ...]


def alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[2] == str(pgid) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@attrs.define
class ModuleProcess:
    folder: Path
    process: trio.Process
    sidecars: set[int] = attrs.Factory(set)

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        path = self.folder / "record.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [row for row in rows if event is None or row["event"] == event]

    def logged(self, level: str | None = None) -> list[str]:
        return [r["message"] for r in self.records("log") if level is None or r["level"] == level]

    def output(self) -> str:
        return (self.folder / "module.out").read_text(errors="replace")

    def watch_sidecars(self) -> list[int]:
        """The module's current children (the sidecar), remembered for the end checks."""
        current = children(self.process.pid)
        self.sidecars.update(current)
        return current


@asynccontextmanager
async def launched_module(
    folder: Path,
    prefix: Path,
    config_module: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ModuleProcess]:
    config_file = folder / "config.yaml"
    config_file.write_text(everest_config(config_module))
    # The manager refuses a config before any module starts; this raises ManagerRefused.
    setup = manager.build_module_setup(config_file, MODULE_ID, prefix)
    setup_file = folder / "setup.json"
    setup_file.write_text(manager.setup_to_json(setup))
    log_conf = folder / "logging.ini"
    log_conf.write_text("[Core]\nDisableLogging=false\n")
    directory = module_dir(prefix)
    venv_python = directory / ".venv" / "bin" / "python3"
    python = str(venv_python) if venv_python.exists() else "python3"
    environment = {
        **os.environ,
        "EV_MODULE": MODULE_ID,
        "EV_PREFIX": str(prefix),
        "EV_LOG_CONF_FILE": str(log_conf),
        "EV_MQTT_BROKER_HOST": "127.0.0.1",
        "EV_MQTT_BROKER_PORT": "1883",
        "EV_MQTT_EVEREST_PREFIX": "everest",
        "EV_MQTT_EXTERNAL_PREFIX": "",
        "PYTHONPATH": os.pathsep.join(
            [str(FAKE_EVEREST), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "FAKE_EVEREST_SETUP_FILE": str(setup_file),
        "FAKE_EVEREST_RECORD": str(folder / "record.jsonl"),
        "EEBUS_SIM_PYTHON": sys.executable,  # the simulator as sidecar runs on the test's Python
        **(env or {}),
    }
    if venv_python.exists():
        environment["VIRTUAL_ENV"] = str(directory / ".venv")
        environment["PATH"] = f"{directory / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    with open(folder / "module.out", "wb") as out:  # noqa: ASYNC230 - test setup, tiny file
        process = await trio.lowlevel.open_process(
            [python, str(directory / "module.py")],  # no arguments, like the manager
            cwd=folder,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    handle = ModuleProcess(folder, process)
    try:
        yield handle
    finally:
        if process.returncode is None:
            handle.watch_sidecars()
            process.kill()
            await process.wait()
        for pid in handle.sidecars:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
