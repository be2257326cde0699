"""`eebus-bridge status -c FILE [--json]`: ask the running bridge's status endpoint.

For scripts and shells: exit 0 when the bridge answers and is healthy, 1 when it answers
unhealthy (or refuses our token), 3 when nothing answers at `[status] listen` (not running),
2 when the config gives no address to ask (`listen = ""`, or port 0). Plain `http.client`:
the command is one blocking request and must start fast, without trio or the web stack.
A wildcard bind address (0.0.0.0, ::) is asked on loopback.
"""

from __future__ import annotations

import http.client
import json
from datetime import datetime
from typing import Any, TextIO

from eebus_bridge.config import Config, parse_listen

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
TIMEOUT_S = 5.0

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class StatusUnavailable(Exception):
    """No usable answer; `exit_code` says which kind (see the module docstring)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fetch_status(config: Config, *, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """GET /api/status of the bridge that runs with `config`. Raises StatusUnavailable."""
    listen = config.status.listen
    if not listen:
        raise StatusUnavailable('the status endpoint is switched off ([status] listen = "")', 2)
    host, port = parse_listen(listen)
    if port == 0:
        raise StatusUnavailable(f"[status] listen = {listen!r} picks a port at start", 2)
    host = _WILDCARDS.get(host, host)
    headers = {"Accept": "application/json"}
    if config.status.token is not None:
        headers["Authorization"] = f"Bearer {config.status.token}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", "/api/status", headers=headers)
        response = connection.getresponse()
        body = response.read()
    except (ConnectionRefusedError, FileNotFoundError):
        raise StatusUnavailable(f"eebus-bridge is not running (nothing at {listen})", 3) from None
    except TimeoutError:
        raise StatusUnavailable(f"no answer from {listen} within {timeout_s:g} s", 3) from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot reach {listen}: {exc.strerror or exc}", 3) from None
    except http.client.HTTPException as exc:
        raise StatusUnavailable(f"{listen} does not answer like eebus-bridge: {exc}", 1) from None
    finally:
        connection.close()
    if response.status == 401:
        raise StatusUnavailable(f"{listen} refused the request: check [status] token", 1)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if response.status != 200 or not isinstance(data, dict) or "healthy" not in data:
        raise StatusUnavailable(
            f"{listen} does not answer like eebus-bridge (HTTP {response.status})", 1
        )
    return data


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    minutes, hours = whole // 60, whole // 3600
    if hours < 2:
        return f"{minutes} min"
    return f"{hours} h {minutes % 60} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def _watts(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:g} W"


def _local(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).astimezone().isoformat(sep=" ", timespec="seconds")


def format_status(status: dict[str, Any]) -> str:
    """The status as a few aligned lines for people."""
    bridge, sidecar, failsafe = status["bridge"], status["sidecar"], status["failsafe"]
    verdict = "healthy" if status["healthy"] else "UNHEALTHY"
    rule = f" [{status['rule']}]" if status.get("rule") else ""
    limit = _watts(status["limit_W"])
    if status["limit_W"] is not None:
        limit += f" until {_local(status['end'])}" if status["end"] else " (no end)"
    eg = status["active_eg"] or "none in charge"
    if status["heartbeat_age_s"] is not None:
        eg += f", heartbeat {_duration(status['heartbeat_age_s'])} ago"
    if sidecar["managed"]:
        process = (
            f"pid {sidecar['pid']}, up {_duration(sidecar['uptime_s'])}"
            if sidecar["running"]
            else f"not running ({sidecar['last_exit'] or 'not started'})"
        )
    else:
        process = "external"
    link = "connected" if sidecar["connected"] else "DISCONNECTED"
    lines = [
        f"eebus-bridge {status['version']} (pid {bridge['pid']}, up "
        f"{_duration(bridge['uptime_s'])}): {verdict}",
        f"state         {status['state']} since {_local(status['state_since'])}{rule}",
        f"limit         {limit}",
        f"energy guard  {eg}",
        f"failsafe      {_watts(failsafe['limit_W'])}, {_duration(failsafe['duration_s'])}",
        f"sidecar       {process}, {sidecar['restarts']} restart(s), gRPC {link} "
        f"({sidecar.get('grpc_transport', 'grpclib')})",
    ]
    for sink in status["sinks"]:
        last = sink["last_delivery"]
        delivery = (
            "nothing delivered yet"
            if last is None
            else f"{'delivered' if last['ok'] else 'FAILED'} at {_local(last['time'])}"
        )
        state = {True: "connected, ", False: "DISCONNECTED, ", None: ""}[sink["connected"]]
        lines.append(f"output        {sink['name']}: {state}{delivery}")
    for manager in status["energy_managers"]:
        trusted = "trusted" if manager["trusted"] else "not trusted"
        lines.append(
            f"seen          {manager['ski']} {manager['brand']} {manager['model']} ({trusted})"
        )
    lines += [f"problem       {reason}" for reason in status["reasons"]]
    return "\n".join(lines) + "\n"


def print_status(config: Config, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """The `status` command: print, and return the exit code."""
    try:
        status = fetch_status(config)
    except StatusUnavailable as exc:
        print(f"error: {exc}", file=err)
        return exc.exit_code
    if as_json:
        out.write(json.dumps(status, indent=2) + "\n")
    else:
        out.write(format_status(status))
    return EXIT_HEALTHY if status["healthy"] else EXIT_UNHEALTHY
