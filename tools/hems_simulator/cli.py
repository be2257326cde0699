"""Command line of the simulator: the real sidecar's flags (Go style) plus its own.

    eebus_grpc_api_sim -port 50051 -certificate-path CERT -private-key-path KEY
                       [-scenario NAME|FILE] [-control-port N] [-record FILE] [-ignore-sigterm]
                       [-log-level LEVEL] [-time-scale X] [-connect-delay S] [-seed N]
                       [-approval-timeout S] [-heartbeat-window S] [-eg-ski SKI]
                       [-require-trust] [-legacy-v010] [-lenient-config]

Flags take one or two dashes, `-flag value` or `-flag=value`; booleans need no value.
Certificate and key files are loaded or created like the real sidecar does (credentials.py).
Exit status: 0 after SIGTERM/SIGINT, 1 on a start-up failure (missing flag, a certificate/key
pair that does not load, cannot listen),
2 on a usage or scenario error and when the simulated sidecar crashes (like a Go panic).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from eebus_bridge.start_up import freeze_start_up

from .credentials import LocalCredentials, load_or_create_credentials
from .logs import StdoutLog, parse_level
from .scenario import Scenario, ScenarioError, load_scenario, preset_names, with_overrides
from .sidecar import Lifecycle
from .simulator import open_hems_simulator

# name -> (kind, help). Kinds: int, float, string, bool.
_FLAGS: dict[str, tuple[str, str]] = {
    "port": ("int", "The server port (default 50051)"),
    "certificate-path": ("string", "The path to the certificate"),
    "private-key-path": ("string", "The path to the private key"),
    "scenario": ("string", "Scenario preset name or TOML file (default controlbox)"),
    "control-port": ("int", "Live control on 127.0.0.1:N, JSON lines (0 = pick a free port)"),
    "record": ("string", "Append a JSONL record of RPCs, approvals and events to this file"),
    "ignore-sigterm": ("bool", "Ignore SIGTERM once the service runs, like the real sidecar"),
    "log-level": ("string", "TRACE, DEBUG, INFO, WARN or ERROR (default DEBUG)"),
    "time-scale": ("float", "Multiply every scenario time offset by this factor"),
    "connect-delay": ("float", "Seconds from StartService until the EG connects (scaled)"),
    "seed": ("int", "Seed for random scenario values"),
    "approval-timeout": ("float", "Seconds until unanswered EG writes are rejected (10)"),
    "heartbeat-window": ("float", "IsHeartbeatWithinDuration window in seconds (120)"),
    "eg-ski": ("string", "SKI of the simulated energy guard"),
    "require-trust": ("bool", "The EG connects only after RegisterRemoteSki of its SKI"),
    "legacy-v010": ("bool", "Behave like v0.1.0: SubscribeDiscoveryEvents is UNIMPLEMENTED"),
    "lenient-config": ("bool", "SetConfig checks only what upstream checks"),
}


class FlagError(Exception):
    """A command line the Go flag package would reject (exit status 2)."""


class _HelpRequested(Exception):
    pass


def parse_flags(argv: Sequence[str]) -> dict[str, Any]:
    """Go `flag` semantics: parsing stops at the first non-flag argument or at `--`."""
    values: dict[str, Any] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("h", "help"):
            raise _HelpRequested
        if name not in _FLAGS:
            raise FlagError(f"flag provided but not defined: -{name}")
        kind = _FLAGS[name][0]
        if kind == "bool":
            values[name] = True if value is None else _parse_bool(name, value)
        else:
            if value is None:
                index += 1
                if index >= len(argv):
                    raise FlagError(f"flag needs an argument: -{name}")
                value = argv[index]
            values[name] = _convert(name, kind, value)
        index += 1
    return values


def _parse_bool(name: str, value: str) -> bool:
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise FlagError(f'invalid boolean value "{value}" for -{name}: parse error')


def _convert(name: str, kind: str, value: str) -> Any:
    try:
        if kind == "int":
            return int(value, 0) if value.lower().startswith("0x") else int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise FlagError(f'invalid value "{value}" for flag -{name}: parse error') from None
    return value


def usage() -> str:
    lines = ["Usage of eebus_grpc_api_sim:"]
    for name, (kind, text) in _FLAGS.items():
        lines.append(f"  -{name}" + ("" if kind == "bool" else f" {kind}"))
        lines.append(f"    \t{text}")
    lines.append(f"Scenario presets: {', '.join(preset_names())}")
    return "\n".join(lines) + "\n"


def _go_usage_line() -> None:
    # The real binary prints this (to stdout) when a required path is missing.
    sys.stdout.write(
        "Usage:\n  eebus_grpc_api -port=<port> -certificate-path=<certificate path> "
        "-private-key-path=<private key path>\n"
    )
    sys.stdout.flush()


def _die_like_go(reason: str) -> None:
    """The real process panics: trace on stderr, exit status 2, connections drop at once."""
    sys.stdout.flush()
    sys.stderr.write(
        f"panic: {reason}\n[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]\n\n"
        "goroutine 1 [running]:\n(simulated by tools.hems_simulator)\n"
    )
    sys.stderr.flush()
    os._exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        flags = parse_flags(args)
        level = parse_level(str(flags.get("log-level", "DEBUG")))
    except _HelpRequested:
        sys.stderr.write(usage())
        return 0
    except (FlagError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n{usage()}")
        return 2
    log = StdoutLog(level)

    cert = str(flags.get("certificate-path", ""))
    key = str(flags.get("private-key-path", ""))
    if not cert:
        log.error("No certificate path provided")
        _go_usage_line()
        return 1
    if not key:
        log.error("No private key path provided")
        _go_usage_line()
        return 1
    port = int(flags.get("port", 50051))
    log.info(f"Certificate path: {cert}")
    log.info(f"Private key path: {key}")
    log.info(f"Port: {port}")
    credentials = load_or_create_credentials(Path(cert), Path(key), log)
    if credentials.exit_status is not None:
        return credentials.exit_status

    try:
        scenario = _scenario_from_flags(flags)
    except ScenarioError as exc:
        log.error(f"Scenario: {exc}")
        return 2

    record = flags.get("record")
    record_path = Path(record) if record else None
    if record_path is not None:
        try:
            record_path.open("a", encoding="utf-8").close()
        except OSError as exc:
            log.error(f"Cannot write the record file: {exc}")
            return 1

    return trio.run(
        _serve,
        scenario,
        log,
        port,
        flags.get("control-port"),
        record_path,
        bool(flags.get("ignore-sigterm", False)),
        credentials,
    )


def _scenario_from_flags(flags: dict[str, Any]) -> Scenario:
    scenario = load_scenario(str(flags.get("scenario", "controlbox")))
    return with_overrides(
        scenario,
        time_scale=flags.get("time-scale"),
        seed=flags.get("seed"),
        eg_ski=flags.get("eg-ski"),
        connect_delay_s=flags.get("connect-delay"),
        requires_trust=True if flags.get("require-trust") else None,
        approval_timeout_s=flags.get("approval-timeout"),
        heartbeat_window_s=flags.get("heartbeat-window"),
        discovery=False if flags.get("legacy-v010") else None,
        strict_config=False if flags.get("lenient-config") else None,
    )


async def _serve(
    scenario: Scenario,
    log: StdoutLog,
    port: int,
    control_port: int | None,
    record_path: Path | None,
    ignore_sigterm: bool,
    credentials: LocalCredentials,
) -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            async with open_hems_simulator(
                scenario,
                port=port,
                control_port=control_port,
                record_path=record_path,
                log=log,
                on_crash=_die_like_go,
                local_ski=credentials.ski,
                local_ski_problem=credentials.ski_problem,
            ) as sim:
                eg = scenario.eg
                log.info(
                    f"HEMS simulator: scenario {scenario.name}, EG {sim.eg_ski} "
                    f"({eg.brand} {eg.model}), time scale {scenario.time_scale:g}"
                )
                log.info(f"Control service listening on 127.0.0.1:{sim.port}")
                if sim.control_port is not None:
                    log.info(f"Control interface listening on 127.0.0.1:{sim.control_port}")
                # As `eebus-bridge run` does: without it, a few full GC passes per benchmark run
                # stalled the event or answer in flight, whichever client's turn it was.
                freeze_start_up()
                async for signum in signals:
                    if (
                        signum == signal.SIGTERM
                        and ignore_sigterm
                        and sim.state is Lifecycle.RUNNING
                    ):
                        log.debug("Ignoring SIGTERM (the real sidecar does once its service runs)")
                        continue
                    log.info(f"Received {signal.Signals(signum).name}, shutting down")
                    break
        except OSError as exc:
            log.error(f"failed to listen: {exc}")
            return 1
    return 0
