"""The EVerest module's config (config.yaml `config_module`) translated into the bridge's Config.

EVerest's manager hands the module a flat dict: the keys of manifest.yaml, defaults applied,
types checked against the manifest. The first group of keys is exactly the C++ `EEBUS` module's
(spec/everest.md, "The C++ EEBUS module's manifest"), so that swapping `module: EEBUS` for
`module: PyEebusBridge` keeps every other line of config.yaml. Further keys are ours, in the
same snake_case style; each maps onto one key of the bridge's TOML config and goes through the
same checks as that key (config.config_from_document), so the module and `eebus-bridge run`
can never disagree about what is valid.

The C++ module's rules, kept exactly:
- Only when the sidecar is managed: a relative certificate or key path resolves to
  `<prefix>/etc/everest/certs/<path>`, a relative binary path to the module's own folder; when
  not managed those three keys are ignored (no checks, no problems).
- The allowlist is one comma-separated string: each entry trimmed, lower-cased, spaces removed,
  empty entries dropped, duplicates folded; every entry must then be 40 hex digits.
- Ports and powers non-negative, the four device strings non-empty, the binary present and
  executable. (Ours are stricter where the bridge's own checks are: ports 1..65535, a positive
  maximum power and positive delays.) The C++ module creates the certificate folder here; the
  bridge does that when it starts the sidecar, which keeps this translation free of side effects.

Where the spec is silent:
- A relative `state_file` (ours) resolves like the certificate, under `<prefix>/etc/everest/certs/`,
  so the EEBUS identity and the failsafe values the control box wrote live in one folder; so does
  a relative `history_path`, and an empty one means `history.sqlite3` next to the state file.
- An empty `status_token` means no token (manifest strings need a default); the status
  endpoint's rule still holds: a non-loopback `status_listen` needs a token or
  `status_allow_anonymous`.
- Every problem and warning names the module's key (`vendor_code: must not be empty`), never
  the TOML key path it maps to, because config.yaml is what the integrator edits.
- Unknown keys give a warning, like EVerest's manager.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from eebus_bridge.config import ConfigError, LoadedConfig, config_from_document

# The C++ EEBUS module's keys -> the bridge's config key each one sets (same meaning).
CPP_MODULE_KEYS: dict[str, str] = {
    "manage_eebus_grpc_api_binary": "sidecar.manage",
    "eebus_service_port": "eebus.ship_port",
    "grpc_port": "eebus.grpc_port",
    "eebus_ems_ski_allowlist": "eebus.ems_ski_allowlist",
    "accept_unknown_ems": "eebus.accept_unknown_ems",
    "certificate_path": "sidecar.certificate",
    "private_key_path": "sidecar.private_key",
    "eebus_grpc_api_binary_path": "sidecar.binary",
    "vendor_code": "device.vendor_code",
    "device_brand": "device.brand",
    "device_model": "device.model",
    "serial_number": "device.serial_number",
    "failsafe_control_limit_W": "lpc.failsafe_limit_W",
    "max_nominal_power_W": "lpc.max_nominal_power_W",
    "restart_delay_s": "sidecar.restart_delay_s",
    "reconnect_delay_s": "eebus.reconnect_delay_s",
}

# Our further keys -> the bridge's config key, or None for a key only the module itself reads.
# Adding a key: one line here plus its entry in manifest.yaml (a test compares the two).
EXTRA_MODULE_KEYS: dict[str, str | None] = {
    "failsafe_duration_s": "lpc.failsafe_duration_s",
    "failsafe_duration_max_s": "lpc.failsafe_duration_max_s",
    "approval_policy": "lpc.approval_policy",
    "on_failsafe_expiry": "lpc.on_failsafe_expiry",
    "state_file": "lpc.state_file",
    "heartbeat_timeout_s": "eebus.heartbeat_timeout_s",
    "rpc_timeout_s": "eebus.rpc_timeout_s",
    "grpc_transport": "eebus.grpc_transport",
    "history_enabled": "history.enabled",
    "history_path": "history.path",
    "history_retention_days": "history.retention_days",
    "status_listen": "status.listen",
    "status_token": "status.token",
    "status_allow_anonymous": "status.allow_anonymous",
    "log_level": None,
}

MODULE_KEYS: tuple[str, ...] = (*CPP_MODULE_KEYS, *EXTRA_MODULE_KEYS)
_CONFIG_KEYS: dict[str, str] = {
    module_key: config_key
    for module_key, config_key in {**CPP_MODULE_KEYS, **EXTRA_MODULE_KEYS}.items()
    if config_key is not None
}
_SIDECAR_FILE_KEYS = ("certificate_path", "private_key_path", "eebus_grpc_api_binary_path")
_HEX40 = re.compile(r"[0-9a-f]{40}")
# Longest first, so that "lpc.failsafe_duration_max_s" is not read as "lpc.failsafe_duration_s".
_CONFIG_KEY_PATTERN = re.compile(
    r"(?<![\w.])("
    + "|".join(re.escape(key) for key in sorted(_CONFIG_KEYS.values(), key=len, reverse=True))
    + r")(?![\w])"
)
_MODULE_KEY_OF = {config_key: module_key for module_key, config_key in _CONFIG_KEYS.items()}


@attrs.frozen
class ModulePaths:
    """The two folders EVerest tells a module about (`m.info.paths`)."""

    etc: Path  # <prefix>/etc/everest
    libexec: Path  # the module's own folder, <prefix>/libexec/everest/modules/<Name>


def split_ski_allowlist(text: str) -> tuple[str, ...]:
    """The C++ module's allowlist parsing: split on commas, trim, lower-case, drop spaces,
    drop empty entries, fold duplicates (first occurrence kept). Does not check the entries."""
    entries = (entry.strip().lower().replace(" ", "") for entry in text.split(","))
    return tuple(dict.fromkeys(entry for entry in entries if entry))


def config_from_module_config(module_config: Mapping[str, Any], paths: ModulePaths) -> LoadedConfig:
    """The bridge's Config for this module config; raises ConfigError with every problem.

    The result has no outputs: the module delivers limits through its own everestpy sink.
    """
    problems: list[str] = []
    warnings: list[str] = []
    for key in MODULE_KEYS:
        if key not in module_config:
            problems.append(f"{key}: required key is missing")
    for key in module_config:
        if key not in MODULE_KEYS:
            warnings.append(f"{key}: unknown key, ignored")

    values = {key: module_config[key] for key in _CONFIG_KEYS if key in module_config}
    managed = values.get("manage_eebus_grpc_api_binary", True)
    if "eebus_ems_ski_allowlist" in values:
        values["eebus_ems_ski_allowlist"] = _allowlist(values["eebus_ems_ski_allowlist"], problems)
    if managed is True:
        for key, base in (
            ("certificate_path", paths.etc / "certs"),
            ("private_key_path", paths.etc / "certs"),
            ("eebus_grpc_api_binary_path", paths.libexec),
        ):
            if key in values:
                values[key] = _resolved(values[key], base)
    else:
        # The C++ module ignores them, and so does the bridge: it starts no sidecar, so it uses
        # no certificate, key or binary. os.devnull always exists, so these stand-ins give the
        # loader's location checks nothing to report; the binary stays at its (unchecked) default.
        for key in _SIDECAR_FILE_KEYS:
            values.pop(key, None)
        values["certificate_path"] = values["private_key_path"] = os.devnull
    if "state_file" in values:
        values["state_file"] = _resolved(values["state_file"], paths.etc / "certs")
    if values.get("history_path") == "":
        del values["history_path"]  # "" = the default: history.sqlite3 next to state_file
    elif "history_path" in values:
        values["history_path"] = _resolved(values["history_path"], paths.etc / "certs")

    if values.get("status_token") == "":
        del values["status_token"]  # "" = no token (a manifest string key needs a default)

    document: dict[str, Any] = {"device": {}}  # [device] is required even when all is missing
    for module_key, value in values.items():
        *tables, name = _CONFIG_KEYS[module_key].split(".")
        table = document
        for part in tables:
            table = table.setdefault(part, {})
        table[name] = value
    # Unmanaged, lines about the three ignored keys (a warning that /dev/null is readable by
    # others) are about nothing the integrator wrote.
    ignored = () if managed is True else _SIDECAR_FILE_KEYS
    loaded: LoadedConfig | None = None
    try:
        loaded = config_from_document(document, paths.etc, outputs_required=False)
    except ConfigError as exc:
        problems.extend(_renamed(exc.problems, ignored))
    if problems or loaded is None:  # a missing key may be reported by both passes: once each
        raise ConfigError(list(dict.fromkeys(problems)))
    warnings.extend(_renamed(loaded.warnings, ignored))
    return attrs.evolve(loaded, warnings=tuple(warnings))


def _renamed(lines: Iterable[str], ignored: tuple[str, ...]) -> list[str]:
    renamed = (module_key_names(line) for line in lines)
    return [line for line in renamed if not line.startswith(ignored)]


def module_key_names(line: str) -> str:
    """A problem or warning of the TOML loader with its key paths renamed to module keys."""
    return _CONFIG_KEY_PATTERN.sub(lambda match: _MODULE_KEY_OF[match.group(1)], line)


def _allowlist(value: Any, problems: list[str]) -> list[str]:
    if not isinstance(value, str):
        problems.append(
            f"eebus_ems_ski_allowlist: must be a string of comma-separated SKIs, got {value!r}"
        )
        return []
    entries = split_ski_allowlist(value)
    for number, entry in enumerate(entries, start=1):
        if not _HEX40.fullmatch(entry):
            problems.append(
                f"eebus_ems_ski_allowlist: entry {number} ({entry!r}) is not an SKI: "
                "must be 40 hex digits"
            )
    return [entry for entry in entries if _HEX40.fullmatch(entry)]  # each problem once


def _resolved(value: Any, base: Path) -> Any:
    """`base/value` for a relative path string; anything else unchanged (checked later)."""
    if not isinstance(value, str) or not value or "\0" in value or os.path.isabs(value):
        return value
    return str(base / value)
