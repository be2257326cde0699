"""The bridge's configuration: one TOML file, validated strictly into frozen attrs classes.

The key names are a public contract (docs, example configs and external test suites use them).

Loading happens in two passes, so that one run reports every problem of a file at once:

1. Structure: a strict cattrs converter turns each section into its attrs class. It checks the
   TOML types (no "8080" for 8080, no 1 for true, no 3.9 for 3), unknown keys, required keys and
   each key's own value rules (ranges, choices, SKI format). A broken section does not stop the
   other sections from being checked.
2. Finish: for every section that structured cleanly, resolve relative paths against the config
   file's folder and run the checks that need the file system or several keys at once.

A problem is one line that starts with the key path (`output[0].port: ...`); a warning is a
legal but risky setting (spec timings shortened, unknown EMS accepted, readable private key).
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import math
import os
import re
import shutil
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, override

from eebus_bridge.ski import is_valid_ski, normalize_ski


@attrs.frozen
class DeviceConfig:
    vendor_code: str
    brand: str
    model: str
    serial_number: str
    country: str = "DE"  # ISO 3166-1 alpha-2; C of the SHIP certificate `cert create` makes


# The sidecar client's HTTP/2 stacks ([eebus] grpc_transport; grpc_transport.py implements them).
GrpcTransportName = Literal["grpclib", "grpcio"]


@attrs.frozen
class EebusConfig:
    ship_port: int = 4715
    grpc_port: int = 50051
    heartbeat_timeout_s: int = 60
    ems_ski_allowlist: tuple[str, ...] = ()  # normalised: 40 lower-case hex chars, no duplicates
    accept_unknown_ems: bool = False
    reconnect_delay_s: float = 5.0
    reconnect_delay_max_s: float = 60.0  # the backoff's cap
    rpc_timeout_s: float = 5.0
    # The HTTP/2 stack of the sidecar client (eebus_bridge/grpc_transport.py): pure-Python
    # grpclib, or grpcio's C core (faster; the optional `grpcio` extra).
    grpc_transport: GrpcTransportName = "grpclib"


@attrs.frozen
class SidecarConfig:
    manage: bool = True
    binary: str = (
        "eebus_grpc_api"  # resolved: absolute path when it names a file, else the bare name
    )
    certificate: Path = Path("eebus.crt")
    private_key: Path = Path("eebus.key")
    restart_delay_s: float = 5.0
    restart_delay_max_s: float = 60.0  # the backoff's cap


@attrs.frozen
class LpcTiming:
    """Spec constants of spec/lpc.md; only simulations and tests shorten them."""

    heartbeat_timeout_s: float = 120.0
    init_timeout_s: float = 120.0
    failsafe_recovery_s: float = 120.0
    write_window_s: float = 60.0


@attrs.frozen
class LpcConfig:
    failsafe_limit_W: float = 4200.0
    max_nominal_power_W: float = 32000.0
    failsafe_duration_s: float = 7200.0
    failsafe_duration_max_s: float = 86400.0
    approval_policy: Literal["spec", "permissive"] = "spec"
    on_failsafe_expiry: Literal["unlimited", "stay"] = "unlimited"
    state_file: Path = Path("state.json")
    timing: LpcTiming = LpcTiming()


@attrs.frozen
class JsonlOutput:
    path: Path | None = None  # None = stdout ("-" in the file)
    type: Literal["jsonl"] = "jsonl"


@attrs.frozen
class MqttTls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


@attrs.frozen
class EverestApiOutput:
    """EVerest's external_energy_limits_consumer_API over MQTT (EVerest >= 2025.10)."""

    module_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    transport: Literal["tcp", "websockets", "unix"] = "tcp"
    path: Path | None = None  # unix socket path; required when transport = "unix"
    ws_path: str = "/mqtt"
    topic_prefix: str = ""
    client_id: str = ""  # "" = "eebus-bridge-<module_id>"
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    communication_check_s: float = 2.0
    type: Literal["everest-api"] = "everest-api"


@attrs.frozen
class EverestLegacyApiOutput:
    """EVerest's legacy API module: everest_api/<evse_manager_id>/cmd/set_limit_watts."""

    evse_manager_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    transport: Literal["tcp", "websockets", "unix"] = "tcp"
    path: Path | None = None
    ws_path: str = "/mqtt"
    topic_prefix: str = ""
    client_id: str = ""  # "" = "eebus-bridge-<evse_manager_id>"
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    type: Literal["everest-legacy-api"] = "everest-legacy-api"


@attrs.frozen
class RpcApiOutput:
    """EVerest's RpcApi (JSON-RPC 2.0 over WebSocket, EVerest >= 2026.02)."""

    url: str = "ws://127.0.0.1:8080"
    evse_indices: tuple[int, ...] = ()  # () = ask ChargePoint.GetEVSEInfos
    unlimited_power_W: float | None = None  # None = [lpc] max_nominal_power_W
    split: Literal["each", "equal"] = "each"
    type: Literal["rpcapi"] = "rpcapi"


OutputConfig = JsonlOutput | EverestApiOutput | EverestLegacyApiOutput | RpcApiOutput


HISTORY_FILE_NAME = "history.sqlite3"


@attrs.frozen
class HistoryConfig:
    """[history]: the durable record of every limit (eebus_bridge/history)."""

    enabled: bool = True
    path: Path | None = None  # None = history.sqlite3 next to [lpc] state_file
    retention_days: int = 400


@attrs.frozen
class StatusConfig:
    """The status endpoint (page, JSON, metrics, health). listen = "" switches it off.

    Binding to anything but loopback needs a token, or allow_anonymous = true (checked in
    pass 2: it needs two keys at once).
    """

    listen: str = "127.0.0.1:8780"  # "host:port"; "[::1]:8780" for IPv6; "" = no endpoint
    token: str | None = None  # requests must carry "Authorization: Bearer <token>"
    allow_anonymous: bool = False


@attrs.frozen
class Config:
    device: DeviceConfig
    eebus: EebusConfig
    sidecar: SidecarConfig
    lpc: LpcConfig
    outputs: tuple[OutputConfig, ...]
    history: HistoryConfig = HistoryConfig()
    source: Path | None = None  # the file it was loaded from
    status: StatusConfig = StatusConfig()

    @property
    def history_path(self) -> Path:
        """[history] path, or its default next to [lpc] state_file."""
        if self.history.path is not None:
            return self.history.path
        return self.lpc.state_file.parent / HISTORY_FILE_NAME


# --------------------------------------------------------------------------- public API


class ConfigError(Exception):
    """The config file cannot be used. `problems` holds every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...] = ()


_T = TypeVar("_T")
_MqttOutput = TypeVar("_MqttOutput", EverestApiOutput, EverestLegacyApiOutput)

SPEC_LPC_TIMING = LpcTiming()
OUTPUT_TYPES: dict[str, type[OutputConfig]] = {
    "jsonl": JsonlOutput,
    "everest-api": EverestApiOutput,
    "everest-legacy-api": EverestLegacyApiOutput,
    "rpcapi": RpcApiOutput,
}
_SECTIONS = ("device", "eebus", "sidecar", "lpc", "output", "history", "status")


def load_config(path: Path) -> LoadedConfig:
    """Read, check and complete the config file at `path`.

    Raises ConfigError listing every problem found; warnings come back with the config.
    """
    source, document = _read_document(path)
    return config_from_document(document, source.parent, source=source)


def config_from_document(
    document: Mapping[str, Any],
    base_dir: Path,
    *,
    source: Path | None = None,
    outputs_required: bool = True,
) -> LoadedConfig:
    """Check and complete a parsed config (TOML data); relative paths count from `base_dir`.

    Without `outputs_required`, a document without [[output]] gives a config with no outputs:
    the EVerest module brings its own sink.
    """
    report = _Report()

    device = _structure_section(document, "device", DeviceConfig, report, required=True)
    eebus = _structure_section(document, "eebus", EebusConfig, report)
    sidecar = _structure_section(document, "sidecar", SidecarConfig, report)
    if sidecar is not None:
        sidecar = _finish_sidecar(sidecar, base_dir, report)
    lpc = _structure_section(document, "lpc", LpcConfig, report)
    if lpc is not None:
        lpc = _finish_lpc(lpc, base_dir, report)
    outputs = [
        _finish_output(output, key, base_dir, report)
        for key, output in _structure_outputs(document, report, required=outputs_required)
    ]
    history = _structure_section(document, "history", HistoryConfig, report)
    if history is not None and lpc is not None:
        history = _finish_history(history, lpc, base_dir)
    status = _structure_section(document, "status", StatusConfig, report)
    if status is not None:
        _finish_status(status, report)
    for key in document:
        if key not in _SECTIONS:
            report.add(_key_path("", key), "unknown key" + _did_you_mean(key, _SECTIONS))

    if (
        report.problems
        or device is None
        or eebus is None
        or sidecar is None
        or lpc is None
        or history is None
        or status is None
    ):
        raise ConfigError(report.problems)
    config = Config(
        device=device,
        eebus=eebus,
        sidecar=sidecar,
        lpc=lpc,
        outputs=tuple(outputs),
        history=history,
        source=source,
        status=status,
    )
    return LoadedConfig(config=config, warnings=tuple(_warnings(config)))


# --------------------------------------------------------------------------- reading the file


def _read_document(path: Path) -> tuple[Path, dict[str, Any]]:
    """The resolved path and the parsed TOML; any failure is a one-line ConfigError."""
    try:
        source = path.resolve()
        data = source.read_bytes()
    except IsADirectoryError:
        raise ConfigError([f"{_show(path)}: is a directory, not a config file"]) from None
    except FileNotFoundError:
        raise ConfigError([f"{_show(path)}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{_show(path)}: permission denied"]) from None
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL in the path
        raise ConfigError(
            [f"{_show(path)}: cannot read: {_one_line(_os_error_text(exc))}"]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{_show(path)}: not UTF-8 text (bad byte at offset {exc.start})"]
        ) from None
    try:
        # tomllib reports "... (at line L, column C)"; ValueError also covers integers too long
        # for int() (TOMLDecodeError is a ValueError).
        return source, tomllib.loads(text)
    except ValueError as exc:
        raise ConfigError([f"{_show(path)}: invalid TOML: {_one_line(str(exc))}"]) from None


# --------------------------------------------------------------------------- problems


@attrs.define
class _Report:
    problems: list[str] = attrs.Factory(list)

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")


class _Invalid(ValueError):
    """One value broke a rule. `at` locates it below the key cattrs names (e.g. "[2]")."""

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at

    def under(self, prefix: str) -> _Invalid:
        return _Invalid(self.message, prefix + self.at)


def _problem_lines(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' nested exception groups into `key.path: message` lines.

    cattrs.transform_error does the same walk, but its fixed "message @ $.path" layout cannot
    give the per-key "unknown key" lines and the messages users see here.
    """
    if isinstance(exc, ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        lines = [
            line
            for sub, note in with_notes
            for line in _problem_lines(sub, _key_path(path, note.name))
        ]
        return lines + [line for sub in without_notes for line in _problem_lines(sub, path)]
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [field.name for field in attrs.fields(exc.cl)]
        return [
            f"{_key_path(path, key)}: unknown key{_did_you_mean(key, known)}"
            for key in sorted(exc.extra_fields)
        ]
    if isinstance(exc, BaseExceptionGroup):
        return [line for sub in exc.exceptions for line in _problem_lines(sub, path)]
    if isinstance(exc, _Invalid):
        return [f"{path}{exc.at}: {exc.message}"]
    if isinstance(exc, KeyError):  # cattrs' way of saying a key without default is absent
        return [f"{path}: required key is missing"]
    return [f"{path}: {_one_line(f'{type(exc).__name__}: {exc}')}"]


def _key_path(parent: str, key: str) -> str:
    name = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)
    return f"{parent}.{name}" if parent else name


def _did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f" (did you mean {_toml_string(close[0])}?)" if close else ""


def _describe(value: Any) -> str:
    """How a problem shows the offending value: its TOML type and (shortened) TOML text."""
    if isinstance(value, dict):
        return "a table"
    kinds: tuple[tuple[type[Any], str], ...] = (
        (bool, "boolean"),  # before int: a bool is an int
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (datetime, "date-time"),  # before date: a datetime is a date
        (date, "date"),
        (time, "time"),
    )
    kind = next((name for cls, name in kinds if isinstance(value, cls)), type(value).__name__)
    return f"{kind} {_shorten(_toml_value(value))}"


def _not_one_of(choices: Iterable[str], value: Any) -> str:
    listing = ", ".join(_toml_string(choice) for choice in choices)
    got = _quoted(value) if isinstance(value, str) else _describe(value)
    return f"must be one of {listing}, got {got}"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quoted(text: str) -> str:
    return _shorten(_toml_string(text))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _number(value: float) -> str:
    """A number as the user would write it: 7200 rather than 7200.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _show(path: Path | str) -> str:
    """A path for a problem line: as is, or quoted when it holds line breaks or other controls."""
    text = str(path)
    return text if text.isprintable() else _toml_string(text)


def _os_error_text(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


# --------------------------------------------------------------------------- pass 1: structure
# Type hooks: TOML already gives typed values, so each hook only accepts the right type.


def _structure_bool(value: Any, _type: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"must be true or false, got {_describe(value)}")


def _structure_int(value: Any, _type: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Invalid(f"must be an integer, got {_describe(value)}")


def _structure_float(value: Any, _type: Any) -> float:
    """Seconds and watts: an integer or a float, stored as float; never NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"must be a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Invalid(f"must be a finite number, got {_describe(value)}")
    return number


def _structure_str(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Invalid(f"must be a string, got {_describe(value)}")


def _structure_path(value: Any, _type: Any) -> Path:
    """A path as written; pass 2 resolves it against the config folder."""
    text = _structure_str(value, str)
    if not text:
        raise _Invalid("must not be empty")
    if "\0" in text:
        raise _Invalid("must not contain a NUL character")
    return Path(text)


def _is_literal(type_: Any) -> bool:
    return get_origin(type_) is Literal


def _structure_literal(value: Any, type_: Any) -> str:
    choices = get_args(type_)
    if isinstance(value, str) and value in choices:
        return value
    raise _Invalid(_not_one_of(choices, value))


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook(converter: cattrs.Converter) -> Callable[[Any, Any], tuple[Any, ...]]:
    """tuple[X, ...] from a TOML array, reporting each bad item as key[index]."""

    def structure_tuple(value: Any, type_: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"must be an array, got {_describe(value)}")
        item_type = get_args(type_)[0]
        items: list[Any] = []
        errors: list[_Invalid] = []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except _Invalid as exc:
                errors.append(exc.under(f"[{index}]"))
        if errors:
            raise ExceptionGroup("invalid array items", errors)
        return tuple(items)

    return structure_tuple


# Value rules: run on a key's value after its type hook accepted it. A rule returns the value
# to store (it may normalise it) or raises _Invalid.
_Rule = Callable[[Any], Any]


def _between(low: float, high: float) -> _Rule:
    def check_between(value: float) -> float:
        if not low <= value <= high:
            raise _Invalid(
                f"must be between {_number(low)} and {_number(high)}, got {_number(value)}"
            )
        return value

    return check_between


def _installed_transport(value: str) -> str:
    if value == "grpcio" and importlib.util.find_spec("grpc") is None:
        raise _Invalid(
            "'grpcio' needs the grpcio package, which is not installed "
            "(pip install 'eebus-bridge[grpcio]'), or use 'grpclib'"
        )
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise _Invalid(f"must be greater than 0, got {_number(value)}")
    return value


def _not_negative(value: float) -> float:
    if value < 0:
        raise _Invalid(f"must be 0 or more, got {_number(value)}")
    return value


def _not_empty(value: str) -> str:
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _country_code(value: str) -> str:
    if re.fullmatch(r"[A-Z]{2}", value) is None:
        raise _Invalid(
            f'must be two upper-case letters (ISO 3166-1 alpha-2, e.g. "DE"), got {_quoted(value)}'
        )
    return value


def _program(value: str) -> str:
    _not_empty(value)
    if "\0" in value:
        raise _Invalid("must not contain a NUL character")
    return value


def _mqtt_topic_level(value: str) -> str:
    """An id that becomes one level of an MQTT topic: no wildcards, no level separator."""
    _not_empty(value)
    bad = sorted(set(value) & set("+#/"))
    if bad:
        shown = " ".join(_toml_string(char) for char in bad)
        raise _Invalid(
            f"must not contain {shown} (it is one MQTT topic level), got {_quoted(value)}"
        )
    return value


def _mqtt_topic_prefix(value: str) -> str:
    if "+" in value or "#" in value:
        raise _Invalid(f'must not contain the MQTT wildcards "+" or "#", got {_quoted(value)}')
    return value


def _ws_path(value: str) -> str:
    if not value.startswith("/"):
        raise _Invalid(f'must start with "/", got {_quoted(value)}')
    return value


def _websocket_url(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme not in ("ws", "wss") or not rest:
        raise _Invalid(
            f'must be a WebSocket URL starting with "ws://" or "wss://", got {_quoted(value)}'
        )
    return value


def _ski_allowlist(value: tuple[str, ...]) -> tuple[str, ...]:
    """Normalised SKIs (users paste them as "AB:CD:..."), duplicates folded, order kept."""
    errors = [
        _Invalid(
            f"must be 40 hex digits (spaces and colons are ignored), got {_quoted(ski)}", f"[{i}]"
        )
        for i, ski in enumerate(value)
        if not is_valid_ski(ski)
    ]
    if errors:
        raise ExceptionGroup("invalid SKIs", errors)
    return tuple(dict.fromkeys(normalize_ski(ski) for ski in value))


def _evse_indices(value: tuple[int, ...]) -> tuple[int, ...]:
    errors: list[_Invalid] = []
    for i, index in enumerate(value):
        if index < 0:
            errors.append(_Invalid(f"must be 0 or more, got {index}", f"[{i}]"))
        elif index in value[:i]:
            errors.append(_Invalid(f"repeats EVSE index {index}", f"[{i}]"))
    if errors:
        raise ExceptionGroup("invalid EVSE indices", errors)
    return value


def _stdout_or_path(value: Path) -> Path | None:
    return None if str(value) == "-" else value


def parse_listen(listen: str) -> tuple[str, int]:
    """("host", port) of a `[status] listen` value: "127.0.0.1:8780", "[::1]:8780",
    "localhost:8780" or "0.0.0.0:8780". Port 0 takes any free port. Raises ValueError."""
    host, colon, port_text = listen.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f'must be "host:port" (e.g. "127.0.0.1:8780"), got {_quoted(listen)}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_quoted(host)} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f'write an IPv6 address in brackets ("[::1]:8780"), got {_quoted(listen)}')
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ValueError(f"{_quoted(host)} is not a host name or IP address")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return host, port


def is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback addresses; any other name may resolve to a public
    address, so it counts as not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _status_listen(value: str) -> str:
    if value:
        try:
            parse_listen(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    return value


def _http_token(value: str) -> str:
    """A bearer token travels in an HTTP header: printable ASCII without spaces."""
    _not_empty(value)
    if not all("!" <= char <= "~" for char in value):
        raise _Invalid("must be printable ASCII without spaces (it is sent in an HTTP header)")
    return value


_PORT = _between(1, 65535)
_FAILSAFE_DURATION = _between(7200, 86400)  # 2 h to 24 h; the sidecar refuses anything else
_MQTT_RULES: dict[str, _Rule] = {
    "host": _not_empty,
    "port": _PORT,
    "ws_path": _ws_path,
    "topic_prefix": _mqtt_topic_prefix,
}

# Every class the loader structures, nested classes before the classes that contain them
# (cattrs builds each class's hook from the hooks its field types have at that moment).
_FIELD_RULES: dict[type[Any], dict[str, _Rule]] = {
    DeviceConfig: {
        "vendor_code": _not_empty,
        "brand": _not_empty,
        "model": _not_empty,
        "serial_number": _not_empty,
        "country": _country_code,
    },
    EebusConfig: {
        "ship_port": _PORT,
        "grpc_port": _PORT,
        "heartbeat_timeout_s": _between(5, 3600),
        "ems_ski_allowlist": _ski_allowlist,
        "reconnect_delay_s": _positive,
        "reconnect_delay_max_s": _positive,
        "rpc_timeout_s": _positive,
        "grpc_transport": _installed_transport,
    },
    SidecarConfig: {
        "binary": _program,
        "restart_delay_s": _positive,
        "restart_delay_max_s": _positive,
    },
    LpcTiming: {
        "heartbeat_timeout_s": _positive,
        "init_timeout_s": _positive,
        "failsafe_recovery_s": _positive,
        "write_window_s": _positive,
    },
    LpcConfig: {
        "failsafe_limit_W": _not_negative,
        "max_nominal_power_W": _positive,
        "failsafe_duration_s": _FAILSAFE_DURATION,
        "failsafe_duration_max_s": _FAILSAFE_DURATION,
    },
    HistoryConfig: {"retention_days": _between(1, 36500)},
    MqttTls: {},
    JsonlOutput: {"path": _stdout_or_path},
    EverestApiOutput: {
        "module_id": _mqtt_topic_level,
        "communication_check_s": _positive,
        **_MQTT_RULES,
    },
    EverestLegacyApiOutput: {"evse_manager_id": _mqtt_topic_level, **_MQTT_RULES},
    StatusConfig: {"listen": _status_listen, "token": _http_token},
    RpcApiOutput: {
        "url": _websocket_url,
        "evse_indices": _evse_indices,
        "unlimited_power_W": _positive,
    },
}


def _table_hook(structure_fields: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    def structure_table(value: Any, type_: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"must be a table, got {_describe(value)}")
        return structure_fields(value, type_)

    return structure_table


def _ruled_field_hook(converter: cattrs.Converter, rule: _Rule) -> Callable[[Any, Any], Any]:
    def structure_field(value: Any, type_: Any) -> Any:
        return rule(converter.structure(value, type_))

    return structure_field


def _strict_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook_func(_is_literal, _structure_literal)
    converter.register_structure_hook_func(_is_homogeneous_tuple, _tuple_hook(converter))
    for cls, rules in _FIELD_RULES.items():
        overrides: dict[str, Any] = {
            name: override(struct_hook=_ruled_field_hook(converter, rule))
            for name, rule in rules.items()
        }
        structure_fields = make_dict_structure_fn(cls, converter, **overrides)
        converter.register_structure_hook(cls, _table_hook(structure_fields))
    return converter


_CONVERTER = _strict_converter()


def _structure_section(
    document: Mapping[str, Any], key: str, cls: type[_T], report: _Report, *, required: bool = False
) -> _T | None:
    """The top-level table `key` as `cls`, or None after reporting its problems."""
    if required and key not in document:
        report.add(key, f"required table [{key}] is missing")
        return None
    return _structure(document.get(key, {}), cls, key, report)


def _structure(raw: Any, cls: type[_T], key: str, report: _Report) -> _T | None:
    try:
        return _CONVERTER.structure(raw, cls)
    except Exception as exc:  # whatever goes wrong in there becomes a problem line
        report.problems.extend(_problem_lines(exc, key))
        return None


def _structure_outputs(
    document: Mapping[str, Any], report: _Report, *, required: bool = True
) -> list[tuple[str, OutputConfig]]:
    """(key path, output) for every [[output]] table that structured cleanly."""
    if not required and "output" not in document:
        return []
    raw = document.get("output", [])
    if not isinstance(raw, list):
        report.add("output", f"must be an array of tables ([[output]]), got {_describe(raw)}")
        return []
    if not raw:
        report.add("output", "at least one [[output]] table is required")
        return []
    outputs: list[tuple[str, OutputConfig]] = []
    for index, table in enumerate(raw):
        key = f"output[{index}]"
        if not isinstance(table, dict):
            report.add(key, f"must be a table, got {_describe(table)}")
            continue
        if "type" not in table:
            report.add(f"{key}.type", "required key is missing")
            continue
        cls = OUTPUT_TYPES.get(table["type"]) if isinstance(table["type"], str) else None
        if cls is None:
            report.add(f"{key}.type", _not_one_of(OUTPUT_TYPES, table["type"]))
            continue
        output = _structure(table, cls, key, report)
        if output is not None:
            outputs.append((key, output))
    return outputs


# --------------------------------------------------------------------------- pass 2: finish
# Paths become absolute (relative ones count from the config file's folder, not the working
# directory, so a config works from wherever it is started) and are checked on the file system.


def _absolute(base_dir: Path, path: Path) -> Path:
    return Path(os.path.normpath(base_dir / path))


def _finish_sidecar(sidecar: SidecarConfig, base_dir: Path, report: _Report) -> SidecarConfig:
    certificate = _absolute(base_dir, sidecar.certificate)
    private_key = _absolute(base_dir, sidecar.private_key)
    # Missing certificate and key are fine: the sidecar creates both at its first start.
    _report_location("sidecar.certificate", _location_problem(certificate), report)
    _report_location("sidecar.private_key", _location_problem(private_key), report)
    return attrs.evolve(
        sidecar,
        binary=_find_binary(sidecar, base_dir, report),
        certificate=certificate,
        private_key=private_key,
    )


def _find_binary(sidecar: SidecarConfig, base_dir: Path, report: _Report) -> str:
    """A bare name is looked up on PATH, anything with a "/" is a path (like a shell does)."""
    if "/" not in sidecar.binary:
        found = shutil.which(sidecar.binary)
        if found is not None:
            return os.path.abspath(found)
        if sidecar.manage:
            report.add(
                "sidecar.binary",
                f"{_quoted(sidecar.binary)} was not found on PATH; give its path, "
                "or set sidecar.manage = false when something else starts the sidecar",
            )
        return sidecar.binary
    binary = _absolute(base_dir, Path(sidecar.binary))
    if sidecar.manage:
        _report_location("sidecar.binary", _existing_file_problem(binary, os.X_OK), report)
    return str(binary)


def _finish_lpc(lpc: LpcConfig, base_dir: Path, report: _Report) -> LpcConfig:
    if lpc.failsafe_duration_max_s < lpc.failsafe_duration_s:
        report.add(
            "lpc.failsafe_duration_max_s",
            f"must be at least lpc.failsafe_duration_s ({_number(lpc.failsafe_duration_s)}), "
            f"got {_number(lpc.failsafe_duration_max_s)}",
        )
    state_file = _absolute(base_dir, lpc.state_file)
    # The state is replaced by writing a temporary file and renaming it, so the folder itself
    # must be writable even when the file already exists.
    _report_location("lpc.state_file", _location_problem(state_file, folder_written=True), report)
    return attrs.evolve(lpc, state_file=state_file)


def _finish_history(history: HistoryConfig, lpc: LpcConfig, base_dir: Path) -> HistoryConfig:
    """Default path: history.sqlite3 in the folder of [lpc] state_file (already absolute).

    A location the bridge cannot write is only a warning (see _warnings): the history is a
    record of the control, never a reason to stop controlling.
    """
    if history.path is None:
        return attrs.evolve(history, path=lpc.state_file.parent / HISTORY_FILE_NAME)
    return attrs.evolve(history, path=_absolute(base_dir, history.path))


def _finish_status(status: StatusConfig, report: _Report) -> None:
    """Anyone who can reach a non-loopback address could read the status: ask for a token."""
    if not status.listen or status.token is not None or status.allow_anonymous:
        return
    host, _ = parse_listen(status.listen)
    if not is_loopback_host(host):
        report.add(
            "status.token",
            f"required when status.listen ({_quoted(status.listen)}) is not a loopback address; "
            "set a token, or status.allow_anonymous = true to let anyone on the network read "
            "the status",
        )


def _finish_output(output: OutputConfig, key: str, base_dir: Path, report: _Report) -> OutputConfig:
    if isinstance(output, JsonlOutput):
        if output.path is None:
            return output
        path = _absolute(base_dir, output.path)
        _report_location(f"{key}.path", _location_problem(path), report)
        return attrs.evolve(output, path=path)
    if isinstance(output, EverestApiOutput):
        return _finish_mqtt_output(output, key, base_dir, report)
    if isinstance(output, EverestLegacyApiOutput):
        return _finish_mqtt_output(output, key, base_dir, report)
    return output


def _finish_mqtt_output(
    output: _MqttOutput, key: str, base_dir: Path, report: _Report
) -> _MqttOutput:
    path = None if output.path is None else _absolute(base_dir, output.path)
    if output.transport == "unix" and path is None:
        report.add(f"{key}.path", 'required when transport = "unix" (the broker\'s socket)')
    if output.transport != "unix" and path is not None:
        report.add(
            f"{key}.path",
            f'only used with transport = "unix", but transport is {_toml_string(output.transport)}',
        )
    tls = output.tls
    if tls is not None:
        tls = MqttTls(
            ca_file=_tls_file(tls.ca_file, f"{key}.tls.ca_file", base_dir, report),
            cert_file=_tls_file(tls.cert_file, f"{key}.tls.cert_file", base_dir, report),
            key_file=_tls_file(tls.key_file, f"{key}.tls.key_file", base_dir, report),
            verify=tls.verify,
        )
    return attrs.evolve(output, path=path, tls=tls)


def _tls_file(file: Path | None, key: str, base_dir: Path, report: _Report) -> Path | None:
    if file is None:
        return None
    path = _absolute(base_dir, file)
    _report_location(key, _existing_file_problem(path, os.R_OK), report)
    return path


def _report_location(key: str, problem: str | None, report: _Report) -> None:
    if problem is not None:
        report.add(key, problem)


def _stat(path: Path) -> os.stat_result | None:
    """stat() of `path`; None when it does not exist. Other OS errors propagate."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _location_problem(path: Path, *, folder_written: bool = False) -> str | None:
    """Why `path` cannot be written or created; None when it can.

    A missing file is fine when the nearest folder that exists above it is a writable directory
    (the folders in between can be created). With `folder_written`, that holds even when the
    file exists, because the file is replaced by renaming a temporary file next to it.
    """
    try:
        status = _stat(path)
        if status is not None and stat.S_ISDIR(status.st_mode):
            return f"{_show(path)} is a directory"
        if status is not None and not folder_written:
            return None
        for folder in path.parents:
            status = _stat(folder)
            if status is None:
                continue
            if not stat.S_ISDIR(status.st_mode):
                return f"cannot create {_show(path)}: {_show(folder)} is not a directory"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"cannot create {_show(path)}: folder {_show(folder)} is not writable"
            return None
    except (OSError, ValueError) as exc:
        return f"cannot check {_show(path)}: {_os_error_text(exc)}"
    return None


def _existing_file_problem(path: Path, access: int) -> str | None:
    """Why `path` is not an existing file we may read (os.R_OK) or run (os.X_OK); None if it is."""
    try:
        status = _stat(path)
    except (OSError, ValueError) as exc:
        return f"cannot check {_show(path)}: {_os_error_text(exc)}"
    if status is None:
        return f"{_show(path)} does not exist"
    if not stat.S_ISREG(status.st_mode):
        return f"{_show(path)} is not a file"
    if not os.access(path, access):
        return f"{_show(path)} is not {'executable' if access == os.X_OK else 'readable'}"
    return None


# --------------------------------------------------------------------------- warnings


def _warnings(config: Config) -> list[str]:
    """Legal settings that are risky, or that only make sense in tests and simulations."""
    warnings: list[str] = []
    eebus = config.eebus
    if eebus.heartbeat_timeout_s > 62:
        warnings.append(
            f"eebus.heartbeat_timeout_s = {eebus.heartbeat_timeout_s} makes the sidecar send our "
            f"heartbeat only every {eebus.heartbeat_timeout_s - 2} s; the spec wants it at least "
            "every 60 s [LPC-TS-007], so use at most 62"
        )
    if eebus.accept_unknown_ems:
        warnings.append(
            "eebus.accept_unknown_ems = true: any EMS that finds this device may limit its "
            "power; list the trusted ones in eebus.ems_ski_allowlist instead"
        )
    elif not eebus.ems_ski_allowlist:
        warnings.append(
            "eebus.ems_ski_allowlist is empty and accept_unknown_ems is false: "
            "no EMS will be able to control this device"
        )
    warnings.extend(_private_key_warnings(config.sidecar.private_key))
    lpc = config.lpc
    if lpc.failsafe_limit_W > lpc.max_nominal_power_W:
        warnings.append(
            f"lpc.failsafe_limit_W = {_number(lpc.failsafe_limit_W)} is above "
            f"lpc.max_nominal_power_W = {_number(lpc.max_nominal_power_W)}, so failsafe does "
            "not limit anything"
        )
    if config.history.enabled:
        # SQLite's WAL mode keeps -wal and -shm files next to the database: the folder must
        # be writable even when the file exists.
        problem = _location_problem(config.history_path, folder_written=True)
        if problem is not None:
            warnings.append(
                f"history.path: {problem}; the bridge runs, but records no history until it can"
            )
    for field in attrs.fields(LpcTiming):
        value = getattr(lpc.timing, field.name)
        spec_value = getattr(SPEC_LPC_TIMING, field.name)
        if value != spec_value:
            warnings.append(
                f"lpc.timing.{field.name} = {_number(value)} differs from the spec value "
                f"{_number(spec_value)} s; use only for tests and simulations"
            )
    warnings.extend(_status_warnings(config.status))
    for index, output in enumerate(config.outputs):
        if isinstance(output, EverestApiOutput) and output.communication_check_s >= 5:
            warnings.append(
                f"output[{index}].communication_check_s = {_number(output.communication_check_s)}"
                " is not below EVerest's default check timeout of 5 s; EVerest may consider "
                "the bridge gone between two checks"
            )
    return warnings


def _status_warnings(status: StatusConfig) -> list[str]:
    warnings: list[str] = []
    if status.token is not None and len(status.token) < 16:
        warnings.append("status.token is shorter than 16 characters; it is easy to guess")
    if status.listen and status.token is None and status.allow_anonymous:
        host, _ = parse_listen(status.listen)
        if not is_loopback_host(host):
            warnings.append(
                f"status.allow_anonymous = true on {_quoted(status.listen)}: anyone who can "
                "reach this address can read the charger's status and history"
            )
    return warnings


def _private_key_warnings(private_key: Path) -> list[str]:
    try:
        status = _stat(private_key)
    except (OSError, ValueError):
        return []  # pass 2 already checked the location
    if status is None or not status.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return []
    return [
        f"sidecar.private_key: {_show(private_key)} is readable by group or others "
        f"(mode {stat.S_IMODE(status.st_mode):04o}); chmod 600 it"
    ]


# --------------------------------------------------------------------------- effective config
# check-config prints the config as the bridge will use it. A tiny TOML writer suffices: the
# values are plain tables, arrays, strings, numbers and booleans.


def config_to_toml_dict(config: Config, *, hide_secrets: bool = True) -> dict[str, Any]:
    """The config as plain TOML data: defaults filled in, paths absolute, unset keys left out.

    With `hide_secrets`, MQTT passwords read "<hidden>": check-config output ends up in logs
    and bug reports.
    """
    return {
        "device": _plain_table(config.device),
        "eebus": _plain_table(config.eebus),
        "sidecar": _plain_table(config.sidecar),
        "lpc": _plain_table(config.lpc),
        "output": [_plain_output(output, hide_secrets) for output in config.outputs],
        "history": _plain_table(config.history),
        "status": _plain_status(config.status, hide_secrets),
    }


def _plain_status(status: StatusConfig, hide_secrets: bool) -> dict[str, Any]:
    table = _plain_table(status)
    if hide_secrets and "token" in table:
        table["token"] = "<hidden>"
    return table


def _plain_output(output: OutputConfig, hide_secrets: bool) -> dict[str, Any]:
    table = _plain_table(output)
    if isinstance(output, JsonlOutput) and output.path is None:
        table["path"] = "-"
    if hide_secrets and "password" in table:
        table["password"] = "<hidden>"
    return {"type": table.pop("type"), **table}


def _plain_table(value: Any) -> dict[str, Any]:
    # TOML has no null: a key that is not set (None) is left out, as in the file.
    return {
        field.name: _plain(getattr(value, field.name))
        for field in attrs.fields(type(value))
        if getattr(value, field.name) is not None
    }


def _plain(value: Any) -> Any:
    if attrs.has(type(value)):
        return _plain_table(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def dump_toml(document: Mapping[str, Any]) -> str:
    """TOML text for plain data: tables, arrays (of tables), str, int, float, bool, dates."""
    lines: list[str] = []
    _dump_table(document, (), None, lines)
    return "\n".join(lines) + "\n"


def _dump_table(
    table: Mapping[str, Any], path: tuple[str, ...], header: str | None, lines: list[str]
) -> None:
    if header is not None:
        if lines:
            lines.append("")
        lines.append(header)
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, Mapping) or _is_array_of_tables(value):
            nested.append((key, value))  # written after this table's own keys, as TOML needs
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested:
        sub_path = (*path, key)
        name = ".".join(_toml_key(part) for part in sub_path)
        if isinstance(value, Mapping):
            _dump_table(value, sub_path, f"[{name}]", lines)
        else:
            for item in value:
                _dump_table(item, sub_path, f"[[{name}]]", lines)


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, date | time):  # datetime is a date; isoformat() is TOML's syntax
        return value.isoformat()
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    """A TOML basic string (also used to quote values and keys in problem lines)."""
    escaped = []
    for char in text:
        if char in _TOML_ESCAPES:
            escaped.append(_TOML_ESCAPES[char])
        elif not char.isprintable():  # controls, line separators, invisible format characters
            escaped.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
