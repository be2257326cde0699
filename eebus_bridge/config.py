"""The bridge's configuration: one TOML file, validated strictly into frozen attrs classes.

The key names are a public contract (docs, example configs and external test suites use them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs


@attrs.frozen
class DeviceConfig:
    vendor_code: str
    brand: str
    model: str
    serial_number: str


@attrs.frozen
class EebusConfig:
    ship_port: int = 4715
    grpc_port: int = 50051
    heartbeat_timeout_s: int = 60
    ems_ski_allowlist: tuple[str, ...] = ()  # normalised: 40 lower-case hex chars, no duplicates
    accept_unknown_ems: bool = False
    reconnect_delay_s: float = 5.0
    rpc_timeout_s: float = 5.0


@attrs.frozen
class SidecarConfig:
    manage: bool = True
    binary: str = "eebus_grpc_api"  # resolved: absolute path when it names a file, else the bare name
    certificate: Path = Path("eebus.crt")
    private_key: Path = Path("eebus.key")
    restart_delay_s: float = 5.0


@attrs.frozen
class LpcTiming:
    """Spec constants of spec/lpc.md; only simulations and tests shorten them."""

    heartbeat_timeout_s: float = 120.0
    init_timeout_s: float = 120.0
    failsafe_recovery_s: float = 120.0
    write_window_s: float = 60.0


@attrs.frozen
class LpcConfig:
    failsafe_limit_W: float = 4200.0  # noqa: N815
    max_nominal_power_W: float = 32000.0  # noqa: N815
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
    unlimited_power_W: float | None = None  # noqa: N815 - None = [lpc] max_nominal_power_W
    split: Literal["each", "equal"] = "each"
    type: Literal["rpcapi"] = "rpcapi"


OutputConfig = JsonlOutput | EverestApiOutput | EverestLegacyApiOutput | RpcApiOutput


@attrs.frozen
class Config:
    device: DeviceConfig
    eebus: EebusConfig
    sidecar: SidecarConfig
    lpc: LpcConfig
    outputs: tuple[OutputConfig, ...]
    source: Path | None = None  # the file it was loaded from
