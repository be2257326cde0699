"""eebus-bridge as an EVerest module (`PyEebusBridge`), launched by EVerest's manager.

The package data manifest.yaml and module.py are what EVerest sees; `eebus-bridge
everest-module install` copies them into `<prefix>/libexec/everest/modules/PyEebusBridge/`.
The bridge then runs inside that module process and hands each ExternalLimits to the EnergyNode
connected to `eebus_energy_sink`, exactly as the C++ EEBUS module does (spec/everest.md,
"Being launched by EVerest"). Only module.py imports everestpy (only EVerest provides it); the
package never imports module.py.
"""

from eebus_bridge.everest_module.install import (
    MODULE_NAME,
    InstallError,
    InstallResult,
    config_snippet,
    install_module,
    manifest_text,
)
from eebus_bridge.everest_module.log_handler import EverestLogHandler, log_to_everest
from eebus_bridge.everest_module.module_config import (
    CPP_MODULE_KEYS,
    EXTRA_MODULE_KEYS,
    MODULE_KEYS,
    ModulePaths,
    config_from_module_config,
    split_ski_allowlist,
)
from eebus_bridge.everest_module.sink import EverestCommandSink

__all__ = [
    "CPP_MODULE_KEYS",
    "EXTRA_MODULE_KEYS",
    "MODULE_KEYS",
    "MODULE_NAME",
    "EverestCommandSink",
    "EverestLogHandler",
    "InstallError",
    "InstallResult",
    "ModulePaths",
    "config_from_module_config",
    "config_snippet",
    "install_module",
    "log_to_everest",
    "manifest_text",
    "split_ski_allowlist",
]
