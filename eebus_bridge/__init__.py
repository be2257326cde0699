"""eebus-bridge: EEBUS LPC (§14a EnWG) limits from the eebus_grpc_api sidecar to EVerest."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eebus-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
