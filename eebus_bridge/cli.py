"""The `eebus-bridge` command: `check-config` to validate a config, `run` to run the bridge.

Exit codes (design.md): 0 after a clean run or a valid config, 2 for a config or usage error
(every problem on its own `error:` line, never a traceback), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eebus_bridge import __version__
from eebus_bridge.config import (
    ConfigError,
    LoadedConfig,
    config_to_toml_dict,
    dump_toml,
    load_config,
)
from eebus_bridge.logs import LEVELS, setup_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2

_log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the subcommand and return its exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error; argparse has printed it
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG_ERROR
    setup_logging(args.log_level, args.log_format)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        _log.info("interrupted")
        return 130  # the shell's convention for SIGINT
    except Exception:
        _log.exception("unexpected error; exiting")
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eebus-bridge",
        description="EEBUS LPC (§14a EnWG) limits from the eebus_grpc_api sidecar to EVerest.",
    )
    parser.add_argument("--version", action="version", version=f"eebus-bridge {__version__}")
    _add_logging_options(parser, defaults=True)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for name, command, help_text in (
        ("run", _run, "run the bridge until SIGINT/SIGTERM"),
        ("check-config", _check_config, "validate a config and print it with defaults filled in"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c", "--config", type=Path, required=True, metavar="FILE", help="the TOML config"
        )
        # Also accepted after the command (`run -c x --log-level debug`); SUPPRESS keeps the
        # values given before the command when they are not repeated here.
        _add_logging_options(sub, defaults=False)
        sub.set_defaults(command=command)
    _add_history_commands(commands)
    _add_status_command(commands)
    return parser


def _add_status_command(commands: Any) -> None:
    help_text = "print the running bridge's status (exit 0 healthy, 1 unhealthy, 3 not running)"
    sub = commands.add_parser("status", help=help_text, description=help_text)
    sub.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
    sub.add_argument("--json", action="store_true", help="print /api/status as JSON")
    _add_logging_options(sub, defaults=False)
    sub.set_defaults(command=_status)


def _status(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    from eebus_bridge.status.client import print_status

    return print_status(loaded.config, as_json=args.json, out=sys.stdout, err=sys.stderr)


def _add_history_commands(commands: Any) -> None:
    """`history` and `report`: read the [history] file of a config (the bridge may be running)."""
    from eebus_bridge.history.listing import FORMATS, KIND_GROUPS

    window_help = "a span back from now (90s, 30m, 24h, 7d), 'now', or an ISO date(-time); UTC"
    for name, command, help_text, since in (
        ("history", _history, "list what the bridge recorded: writes, states, publications", "24h"),
        ("report", _report, "write the HTML report or the SVG timeline of the limits", "7d"),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
        sub.add_argument("--since", default=since, help=f"{window_help} (default: {since})")
        sub.add_argument("--until", default="now", help=f"{window_help} (default: now)")
        if name == "history":
            sub.add_argument("--kind", choices=KIND_GROUPS, default="all")
            sub.add_argument("--format", choices=FORMATS, default="table")
        else:
            sub.add_argument(
                "--out",
                type=Path,
                required=True,
                metavar="FILE",
                help="report.html or timeline.svg",
            )
        _add_logging_options(sub, defaults=False)
        sub.set_defaults(command=command)


def _add_logging_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info" if defaults else argparse.SUPPRESS,
        help="least severe level logged (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="text lines for people, JSON lines for log collectors (default: text)",
    )


def _load_or_report(path: Path) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"# effective configuration of {loaded.config.source}")
    print(dump_toml(config_to_toml_dict(loaded.config)), end="")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    for warning in loaded.warnings:
        _log.warning("config: %s", warning)
    # Imported here so that check-config and --help never pay for trio, grpclib and friends.
    from eebus_bridge.runtime import run_bridge

    return run_bridge(loaded.config)


def _history_window(args: argparse.Namespace) -> tuple[datetime, datetime] | None:
    from eebus_bridge.history.listing import TimeArgumentError, parse_moment

    now = datetime.now(UTC)
    try:
        since = parse_moment(args.since, now)
        until = parse_moment(args.until, now)
    except TimeArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if until <= since:
        print(
            f"error: --until ({args.until}) must be after --since ({args.since})", file=sys.stderr
        )
        return None
    return since, until


def _history(args: argparse.Namespace) -> int:
    from eebus_bridge.history import HistoryFileError, read_history
    from eebus_bridge.history.listing import KIND_GROUPS, format_activities

    loaded = _load_or_report(args.config)
    window = _history_window(args)
    if loaded is None or window is None:
        return EXIT_CONFIG_ERROR
    path = loaded.config.history_path
    if not path.exists():
        print(f"warning: no history at {path} yet", file=sys.stderr)
    try:
        activities = read_history(path, *window, kinds=KIND_GROUPS[args.kind])
    except HistoryFileError as exc:
        print(f"error: cannot read the history: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(format_activities(activities, args.format))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from eebus_bridge.history import HistoryFileError, read_history, timeline_svg
    from eebus_bridge.history.report import render_report

    loaded = _load_or_report(args.config)
    window = _history_window(args)
    if loaded is None or window is None:
        return EXIT_CONFIG_ERROR
    suffix = args.out.suffix.lower()
    if suffix not in (".html", ".htm", ".svg"):
        print(
            f"error: --out {args.out}: must end in .html (report) or .svg (chart)", file=sys.stderr
        )
        return EXIT_CONFIG_ERROR
    path = loaded.config.history_path
    if not path.exists():
        print(f"warning: no history at {path} yet", file=sys.stderr)
    try:
        activities = read_history(path, *window, context=True)
    except HistoryFileError as exc:
        print(f"error: cannot read the history: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    device = loaded.config.device
    if suffix == ".svg":
        text = timeline_svg(activities, *window)
    else:
        text = render_report(
            activities,
            *window,
            device=f"{device.brand} {device.model}, serial {device.serial_number}",
        )
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"wrote {args.out} ({len(activities)} records, {window[0]:%Y-%m-%d %H:%M} to "
        f"{window[1]:%Y-%m-%d %H:%M} UTC)",
        file=sys.stderr,
    )
    return EXIT_OK
