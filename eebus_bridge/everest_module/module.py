"""PyEebusBridge: eebus-bridge as an EVerest module.

EVerest's manager runs this file as `python3 module.py` (no arguments), with the interpreter of
`.venv/bin/python3` next to it when that exists. `eebus-bridge everest-module install` puts a
copy here together with manifest.yaml and that `.venv` link; the bridge itself is the
eebus_bridge package of that interpreter (see eebus_bridge/everest_module/launch.py).

main() returns only after SIGTERM/SIGINT (exit 0): a module that exits is a crash for EVerest.
It calls init_done even for an invalid config, because the manager waits for every module.
"""

import sys
import threading
from pathlib import Path
from typing import Any

from everest.framework import Module, RuntimeSession, log

from eebus_bridge.everest_module.launch import (
    REQUIREMENT,
    check_module_setup,
    run_bridge,
    run_idle,
)
from eebus_bridge.everest_module.log_handler import log_to_everest
from eebus_bridge.everest_module.module_config import ModulePaths
from eebus_bridge.everest_module.sink import SET_EXTERNAL_LIMITS


def main() -> int:
    log_to_everest(log, "info")  # our log records (and the sidecar's lines) into EVerest's log
    module = Module(RuntimeSession())
    setup = module.say_hello()
    # Indexing and `in` only: everestpy's mappings are bound C++ maps, not necessarily dicts.
    connections = list(setup.connections[REQUIREMENT]) if REQUIREMENT in setup.connections else []
    paths = ModulePaths(etc=Path(module.info.paths.etc), libexec=Path(module.info.paths.libexec))
    start = check_module_setup(dict(setup.configs.module), connections, paths)
    log_to_everest(log, start.log_level)

    ready = threading.Event()
    module.init_done(ready.set)  # on_ready: a framework thread, once every module is ready
    if start.config is None:
        return run_idle(start)
    connection = connections[0]

    def set_external_limits(limits: dict[str, Any]) -> None:
        # Blocks until the EnergyNode answers (at most 300 s); raises RuntimeError on failure.
        module.call_command(connection, SET_EXTERNAL_LIMITS, {"value": limits})

    target = str(connection.module_id)
    return run_bridge(start.config, set_external_limits, target, ready, warnings=start.warnings)


if __name__ == "__main__":
    sys.exit(main())
