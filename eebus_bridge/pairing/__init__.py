"""Pairing with an energy manager: this charger's SHIP certificate and SKI, and the energy
managers (EGs) on the network with the allowlist line to paste.

The CLI verbs `cert create`, `ski` and `discover` use these; `check-config` and `run` use
`check_device_pair` so that a broken certificate/key pair is refused before the sidecar starts.
"""

from eebus_bridge.pairing.certificates import (
    CertificateError,
    CertificatePair,
    PairCheck,
    PairFault,
    ShipCredentials,
    ShipSubject,
    check_sidecar_pair,
    create_ship_credentials,
    load_certificate_pair,
    ski_of,
    write_credentials,
)
from eebus_bridge.pairing.device import (
    CreatedCertificate,
    PairingRefused,
    check_device_pair,
    create_device_certificate,
    device_subject,
    read_device_ski,
)
from eebus_bridge.pairing.discovery import DiscoveryFailed, EnergyManager, run_discover

__all__ = [
    "CertificateError",
    "CertificatePair",
    "CreatedCertificate",
    "DiscoveryFailed",
    "EnergyManager",
    "PairCheck",
    "PairFault",
    "PairingRefused",
    "ShipCredentials",
    "ShipSubject",
    "check_device_pair",
    "check_sidecar_pair",
    "create_device_certificate",
    "create_ship_credentials",
    "device_subject",
    "load_certificate_pair",
    "read_device_ski",
    "run_discover",
    "ski_of",
    "write_credentials",
]
