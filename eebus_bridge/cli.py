"""The `eebus-bridge` command: `check-config` to validate a config, `run` to run the bridge.

Exit codes (design.md): 0 after a clean run or a valid config, 2 for a config or usage error
(every problem on its own `error:` line, never a traceback), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

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
    return parser


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
