"""This charger's own SHIP certificate, as `[device]` and `[sidecar]` of the config describe it.

`cert create` makes the pair the sidecar is pointed at (so the SKI is known before the first
run, and the subject names the charger instead of the sidecar's fixed "EVerest"); `ski` reads
the SKI back. Both refuse with every reason listed rather than half-doing anything: an
existing file is only replaced with `force`, because a new key means a new SKI and every
energy manager paired with the old one must be paired again.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from eebus_bridge.config import Config, DeviceConfig
from eebus_bridge.pairing.certificates import (
    PairCheck,
    ShipCredentials,
    ShipSubject,
    check_sidecar_pair,
    create_ship_credentials,
    write_credentials,
)


class PairingRefused(Exception):
    """The command cannot do what was asked with these files; `problems` says why, one each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class CreatedCertificate:
    certificate: Path
    private_key: Path
    ski: str
    replaced: tuple[Path, ...]  # files that existed before (only with force)


def device_subject(device: DeviceConfig) -> ShipSubject:
    """CN = "<model>-<serial_number>", O = OU = brand, C = country (pairing issue)."""
    return ShipSubject(
        common_name=f"{device.model}-{device.serial_number}",
        organization=device.brand,
        organizational_unit=device.brand,
        country=device.country,
    )


def create_device_certificate(config: Config, *, force: bool = False) -> CreatedCertificate:
    """Create the configured certificate and key; existing files only with `force`."""
    certificate, key = config.sidecar.certificate, config.sidecar.private_key
    existing = tuple(path for path in (certificate, key) if path.exists())
    if existing and not force:
        raise PairingRefused(
            [
                f"{name}: {path} already exists; use --force to replace "
                + ("the pair" if len(existing) == 2 else "it")
                + " (a new key means a new SKI: energy managers must then be paired again)"
                for name, path in (
                    ("sidecar.certificate", certificate),
                    ("sidecar.private_key", key),
                )
                if path in existing
            ]
        )
    for name, path in (("sidecar.certificate", certificate), ("sidecar.private_key", key)):
        if path.is_dir():
            raise PairingRefused([f"{name}: {path} is a directory"])
    credentials: ShipCredentials = create_ship_credentials(device_subject(config.device))
    try:
        write_credentials(credentials, certificate, key)
    except OSError as exc:
        raise PairingRefused(
            [f"sidecar.certificate: cannot write {exc.filename or certificate}: {exc.strerror}"]
        ) from None
    return CreatedCertificate(
        certificate=certificate, private_key=key, ski=credentials.ski, replaced=existing
    )


def read_device_ski(config: Config) -> str:
    """The SKI of the configured certificate, after the same pair checks `run` makes."""
    certificate, key = config.sidecar.certificate, config.sidecar.private_key
    check = check_sidecar_pair(certificate, key)
    if check.problems:
        raise PairingRefused(list(check.problems))
    if check.ski is None:
        raise PairingRefused(
            [
                f"sidecar.certificate: {certificate} does not exist yet; create it with "
                "`eebus-bridge cert create -c CONFIG` (or let the sidecar make one at its "
                "first start)"
            ]
        )
    return check.ski


def check_device_pair(config: Config) -> PairCheck:
    """The configured pair as `check-config`, `run` and `discover` judge it.

    With an external sidecar ([sidecar] manage = false) the files are its business: a missing
    file is not a problem there, but a pair that exists is still checked.
    """
    certificate, key = config.sidecar.certificate, config.sidecar.private_key
    check = check_sidecar_pair(certificate, key)
    if not config.sidecar.manage and not (certificate.exists() and key.exists()):
        return PairCheck(ski=None)
    return check
