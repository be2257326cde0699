"""The `eebus-bridge` command: `check-config` to validate a config, `run` to run the bridge;
`cert create`, `ski` and `discover` for pairing with an energy manager (eebus_bridge.pairing).

Exit codes (design.md): 0 after a clean run or a valid config, 2 for a config or usage error
(every problem on its own `error:` line, never a traceback), 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
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
from eebus_bridge.pairing.device import (
    PairingRefused,
    check_device_pair,
    create_device_certificate,
    read_device_ski,
)
from eebus_bridge.ski import group_ski

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
    _add_pairing_commands(commands)
    return parser


def _add_pairing_commands(commands: Any) -> None:
    """`cert create`, `ski`, `discover` (README "Pairing with an energy manager")."""
    cert = commands.add_parser("cert", help="this charger's SHIP certificate")
    cert_commands = cert.add_subparsers(title="cert commands", required=True, metavar="COMMAND")
    create = _config_command(
        cert_commands,
        "create",
        _cert_create,
        "create the configured SHIP certificate and key, print the SKI",
    )
    create.add_argument(
        "--force", action="store_true", help="replace existing files (a new SKI: pair again)"
    )
    ski = _config_command(
        commands, "ski", _ski, "print this charger's SKI (to enter into the energy manager)"
    )
    ski.add_argument(
        "--format",
        choices=("plain", "grouped", "json"),
        default="plain",
        help="plain: 40 hex digits; grouped: 'xxxx xxxx ...'; json: an object (default: plain)",
    )
    discover = _config_command(
        commands,
        "discover",
        _discover,
        "list the energy managers on the network and print the ems_ski_allowlist line",
    )
    discover.add_argument(
        "--seconds",
        type=_positive_seconds,
        default=30.0,
        metavar="N",
        help="how long to watch with a sidecar of its own (default: 30)",
    )
    discover.add_argument(
        "--status-url",
        metavar="URL",
        help="the running bridge's status endpoint (default: [status] listen); '' = do not ask",
    )
    discover.add_argument("--token", help="Bearer token of the status endpoint ([status] token)")


def _config_command(
    commands: Any, name: str, command: Callable[[argparse.Namespace], int], help_text: str
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="the TOML config"
    )
    _add_logging_options(sub, defaults=False)
    sub.set_defaults(command=command)
    return sub


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


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
        _report_problems(exc.problems)
        return None


def _report_problems(problems: Sequence[str]) -> bool:
    """One `error:` line per problem on stderr; True when there was any."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return bool(problems)


def _check_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    if _report_problems(check_device_pair(loaded.config).problems):
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
    pair = check_device_pair(loaded.config)
    if _report_problems(pair.problems):  # the sidecar would exit or run without a certificate
        return EXIT_CONFIG_ERROR
    for warning in loaded.warnings:
        _log.warning("config: %s", warning)
    if pair.ski is not None:
        _log.info("local SKI %s (from %s)", pair.ski, loaded.config.sidecar.certificate)
    elif loaded.config.sidecar.manage:
        _log.info(
            "no certificate at %s yet: the sidecar creates one; `eebus-bridge ski` shows its SKI",
            loaded.config.sidecar.certificate,
        )
    # Imported here so that check-config and --help never pay for trio, grpclib and friends.
    from eebus_bridge.runtime import run_bridge

    return run_bridge(loaded.config)


def _cert_create(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    try:
        created = create_device_certificate(loaded.config, force=args.force)
    except PairingRefused as exc:
        _report_problems(exc.problems)
        return EXIT_CONFIG_ERROR
    for path in created.replaced:
        print(f"replaced {path}", file=sys.stderr)
    print(f"created {created.certificate} and {created.private_key} (mode 0600)", file=sys.stderr)
    print(created.ski)  # alone on stdout, for scripts
    return EXIT_OK


def _ski(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    try:
        ski = read_device_ski(loaded.config)
    except PairingRefused as exc:
        _report_problems(exc.problems)
        return EXIT_CONFIG_ERROR
    if args.format == "grouped":
        print(group_ski(ski))
    elif args.format == "json":
        certificate = str(loaded.config.sidecar.certificate)
        print(json.dumps({"ski": ski, "grouped": group_ski(ski), "certificate": certificate}))
    else:
        print(ski)
    return EXIT_OK


def _discover(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG_ERROR
    config = loaded.config
    if _report_problems(check_device_pair(config).problems):
        return EXIT_CONFIG_ERROR
    # Imported here, like runtime in _run: the other commands never pay for trio and grpclib.
    from eebus_bridge.pairing.discovery import DiscoveryFailed, run_discover

    if args.log_level != "debug":
        # The sidecar's own chatter would bury the list; its warnings and errors still show.
        logging.getLogger("eebus_grpc_api").setLevel(logging.WARNING)
    try:
        run_discover(
            config,
            seconds=args.seconds,
            status_url=args.status_url,
            token=args.token,
            print_line=lambda line: print(line, flush=True),
        )
    except DiscoveryFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
