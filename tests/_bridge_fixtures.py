"""Running the real bridge in a test: config files, a recording publication cell, helpers."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.config import Config, load_config
from eebus_bridge.island import open_island
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.runtime import Bridge
from tools.hems_simulator import ActionSpec, HemsSimulator, open_hems_simulator

ROOT = Path(__file__).resolve().parent.parent
SIMULATOR = ROOT / "tools" / "eebus_grpc_api_sim"
EG_SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"
OTHER_SKI = "0123456789abcdef0123456789abcdef01234567"

# The sidecar client's HTTP/2 stack in every test config ([eebus] grpc_transport): .ci/run runs
# the tests that talk to a sidecar once more with "grpcio".
GRPC_TRANSPORT = os.environ.get("EEBUS_BRIDGE_TEST_GRPC_TRANSPORT", "grpclib")

# Shortened [lpc.timing] so that a test sees every timed rule within seconds.
FAST_TIMING = {
    "heartbeat_timeout_s": 2.0,
    "init_timeout_s": 2.0,
    "failsafe_recovery_s": 1.5,
    "write_window_s": 1.0,
}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(
    folder: Path,
    *,
    grpc_port: int,
    manage: bool = False,
    eebus: dict[str, object] | None = None,
    lpc: dict[str, object] | None = None,
    timing: dict[str, object] | None = None,
    sidecar: dict[str, object] | None = None,
    status: dict[str, object] | None = None,
    history: dict[str, object] | None = None,
    jsonl: str | None = "publications.jsonl",  # None: no JSONL output
    extra_outputs: str = "",
) -> Path:
    """A complete bridge config in folder/bridge.toml (values merged over test defaults)."""
    sections: dict[str, dict[str, object]] = {
        "device": {
            "vendor_code": "TEST",
            "brand": "eebus-bridge",
            "model": "test-wallbox",
            "serial_number": "SN-1",
        },
        "eebus": {
            "grpc_port": grpc_port,
            "rpc_timeout_s": 1.0,
            "reconnect_delay_s": 0.2,
            "accept_unknown_ems": False,
            "grpc_transport": GRPC_TRANSPORT,
            **(eebus or {}),
        },
        "sidecar": {
            "manage": manage,
            "binary": str(SIMULATOR),
            "restart_delay_s": 0.2,
            **(sidecar or {}),
        },
        "lpc": {"state_file": "state.json", **(lpc or {})},
        "lpc.timing": {**FAST_TIMING, **(timing or {})},
        "history": history or {},
        # Off unless a test asks: tests run in parallel and must not fight over port 8780.
        "status": {"listen": "", **(status or {})},
    }
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    if jsonl is not None:
        lines += ["[[output]]", 'type = "jsonl"', f"path = {_toml_value(jsonl)}", ""]
    lines.append(dedent(extra_outputs))
    path = folder / "bridge.toml"
    path.write_text("\n".join(lines))
    return path


def make_config(folder: Path, **kwargs: Any) -> Config:
    return load_config(write_config(folder, **kwargs)).config


class RecordingPublications(LatestValue[Publication]):
    """The latest-value cell, also keeping every publication for assertions."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[Publication] = []
        self._any = trio.Event()

    def set(self, value: Publication) -> None:
        self.history.append(value)
        super().set(value)
        self._any.set()
        self._any = trio.Event()

    @property
    def states(self) -> list[str]:
        return [p.state for p in self.history]

    async def wait_for(
        self, predicate: Callable[[Publication], bool], *, limit_s: float = 10.0, start: int = 0
    ) -> Publication:
        """The first publication (index >= start) that matches."""
        with trio.fail_after(limit_s):
            while True:
                for publication in self.history[start:]:
                    if predicate(publication):
                        return publication
                await self._any.wait()

    async def wait_state(self, state: str, *, limit_s: float = 10.0, start: int = 0) -> Publication:
        return await self.wait_for(lambda p: p.state == state, limit_s=limit_s, start=start)


def valid_limit(publication: Publication) -> bool:
    """No publication may carry a negative, NaN or infinite value."""
    value = publication.limit_W
    return value is None or (math.isfinite(value) and value >= 0)


@asynccontextmanager
async def running_bridge(
    config: Config, *, activity: ActivityFeed | None = None
) -> AsyncIterator[tuple[Bridge, RecordingPublications]]:
    """The real Bridge (lpc, outputs, supervised connection) inside the test's Trio run.

    Needs the trio-asyncio loop the simulator fixture opens.
    """
    publications = RecordingPublications()
    bridge = Bridge(config, publications=publications, activity=activity)
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        try:
            yield bridge, publications
        finally:
            nursery.cancel_scope.cancel()
    for publication in publications.history:
        assert valid_limit(publication), publication


def limit_write(at_s: float, value: float, duration_s: float = 0.0) -> ActionSpec:
    """A scenario action: the EG writes an active limit at_s after it connected."""
    return ActionSpec(action="send_limit", at_s=at_s, value=value, duration_s=duration_s)


@asynccontextmanager
async def simulated_bridge(
    folder: Path,
    *,
    scenario: str = "controlbox",
    config: dict[str, Any] | None = None,
    activity: ActivityFeed | None = None,
    **simulator: Any,
) -> AsyncIterator[tuple[HemsSimulator, Bridge, RecordingPublications]]:
    """The in-process simulator plus a Bridge connected to it (manage = false).

    Simulator defaults for fast tests: the EG connects 0.1 s after StartService, heartbeats
    every 0.3 s, and writes nothing unless `actions` says so. Config defaults: FAST_TIMING with
    a 30 s Init timeout, so that only the tests about Init see it expire.
    """
    options: dict[str, Any] = {"connect_delay_s": 0.1, "heartbeat_period_s": 0.3, "actions": ()}
    options.update(simulator)  # actions=None keeps the scenario's own actions
    settings = dict(config or {})
    settings["timing"] = {"init_timeout_s": 30.0, **settings.get("timing", {})}
    async with open_island(), open_hems_simulator(scenario, **options) as sim:
        bridge_config = make_config(folder, grpc_port=sim.port, **settings)
        async with running_bridge(bridge_config, activity=activity) as (bridge, publications):
            yield sim, bridge, publications


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
