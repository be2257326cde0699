"""HEMS simulator: a drop-in fake of the `eebus_grpc_api` sidecar with a simulated energy guard.

In-process (tests): `async with open_hems_simulator("controlbox", port=0) as sim: ...`.
Command line: `tools/eebus_grpc_api_sim -port 50051 -certificate-path C -private-key-path K`
(or `python -m tools.hems_simulator ...`). See README.md in this folder.
"""

# trio_asyncio must be imported before grpclib (pulled in below via .sidecar/.servers):
# grpclib.utils binds `asyncio.current_task` at import time, and trio_asyncio replaces that
# function when imported. From Python 3.12 the original is C code that sees no running loop
# under trio-asyncio, so with grpclib first every RPC fails ("no running event loop").
import trio_asyncio  # noqa: F401  (import for its side effect; see above)

from .control import ControlClient
from .logs import SimLog, StdoutLog
from .process import SimulatorProcess, free_tcp_port, open_simulator_process, terminate
from .records import ApprovalRecord, EventRecord, RpcRecord
from .scenario import (
    ActionSpec,
    EgSpec,
    Scenario,
    ScenarioError,
    SidecarSpec,
    load_scenario,
    preset_names,
    with_overrides,
)
from .sidecar import AUTO_REJECT_REASON, Lifecycle, SimulatorCrashed, SimulatorError
from .simulator import HemsSimulator, open_hems_simulator

__all__ = [
    "AUTO_REJECT_REASON",
    "ActionSpec",
    "ApprovalRecord",
    "ControlClient",
    "EgSpec",
    "EventRecord",
    "HemsSimulator",
    "Lifecycle",
    "RpcRecord",
    "Scenario",
    "ScenarioError",
    "SidecarSpec",
    "SimLog",
    "SimulatorCrashed",
    "SimulatorError",
    "SimulatorProcess",
    "StdoutLog",
    "free_tcp_port",
    "load_scenario",
    "open_hems_simulator",
    "open_simulator_process",
    "preset_names",
    "terminate",
    "with_overrides",
]
