"""The status endpoint: live page, /api/status, /api/history, /metrics, /healthz.

    StatusTracker   activity observer: sidecar, connection, sinks, energy managers, counters
    StatusSources   what a status snapshot reads (config, tracker, engine, publications)
    StatusEndpoint  the bridge task serving the web app (hypercorn on Trio + Starlette)
    status_snapshot the /api/status data as a plain dict

Only these light modules are imported with the package; the web stack (app, server, metrics)
is imported when the endpoint task starts (see endpoint.py).
"""

from eebus_bridge.status.endpoint import HistoryAccess, StatusEndpoint
from eebus_bridge.status.snapshot import StatusSources, health_reasons, status_snapshot
from eebus_bridge.status.tracker import StatusTracker

__all__ = [
    "HistoryAccess",
    "StatusEndpoint",
    "StatusSources",
    "StatusTracker",
    "health_reasons",
    "status_snapshot",
]
