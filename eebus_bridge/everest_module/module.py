"""PyEebusBridge: eebus-bridge as an EVerest module.

EVerest's manager runs this file as `python3 module.py` (no arguments) from the module's folder,
with the interpreter of `.venv/bin/python3` next to it when that exists. `eebus-bridge
everest-module install` puts a copy here together with manifest.yaml and that `.venv` link; the
bridge itself is the eebus_bridge package of that interpreter. The call returns only after
SIGTERM/SIGINT (exit 0): a module that exits is a crash for EVerest.
"""

import sys

from eebus_bridge.everest_module.launch import run_module

if __name__ == "__main__":
    sys.exit(run_module())
