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
    _add_everest_module_commands(commands)
    _add_pairing_commands(commands)
    _add_history_commands(commands)
    _add_status_command(commands)
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


def _add_status_command(commands: Any) -> None:
    status = _config_command(
        commands,
        "status",
        _status,
        "print the running bridge's status (exit 0 healthy, 1 unhealthy, 3 not running)",
    )
    status.add_argument("--json", action="store_true", help="print /api/status as JSON")


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
        sub = _config_command(commands, name, command, help_text)
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


# --------------------------------------------------------------------------- everest-module


def _add_everest_module_commands(commands: Any) -> None:
    """`everest-module install|manifest`: the bridge as a module EVerest's manager launches."""
    group = commands.add_parser(
        "everest-module",
        help="install the PyEebusBridge EVerest module, or print its manifest",
        description="The bridge as an EVerest module that replaces the C++ EEBUS module.",
    )
    _add_logging_options(group, defaults=False)
    verbs = group.add_subparsers(title="commands", required=True, metavar="COMMAND")
    install = verbs.add_parser(
        "install",
        help="write <prefix>/libexec/everest/modules/<NAME>/ and print the config.yaml snippet",
        description="Write manifest.yaml, module.py and a .venv link to this environment "
        "into <prefix>/libexec/everest/modules/<NAME>/.",
    )
    install.add_argument(
        "--prefix", type=Path, required=True, help="EVerest's install prefix (e.g. /usr)"
    )
    install.add_argument("--name", default="PyEebusBridge", help="module name (PyEebusBridge)")
    install.add_argument(
        "--force", action="store_true", help="replace the module's files if they exist"
    )
    install.set_defaults(command=_everest_module_install)
    manifest = verbs.add_parser("manifest", help="print the module's manifest.yaml")
    manifest.set_defaults(command=_everest_module_manifest)


def _everest_module_install(args: argparse.Namespace) -> int:
    from eebus_bridge.everest_module import InstallError, config_snippet, install_module

    try:
        result = install_module(args.prefix, name=args.name, force=args.force)
    except InstallError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"# installed {result.module_dir}")
    if result.venv_link is not None:
        print(f"# {result.venv_link} -> {result.venv_link.readlink()}")
    print(config_snippet(args.name), end="")
    return EXIT_OK


def _everest_module_manifest(_args: argparse.Namespace) -> int:
    from eebus_bridge.everest_module import manifest_text

    print(manifest_text(), end="")
    return EXIT_OK


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
