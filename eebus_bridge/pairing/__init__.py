"""Pairing with an energy manager: this charger's SHIP certificate and SKI, and the energy
managers (EGs) on the network with the allowlist line to paste.

    certificates  create SHIP certificates, read SKIs, check a certificate/key pair (no config)
    device        this charger's pair as the config names it: `cert create`, `ski`, the
                  checks of `check-config`/`run`
    discovery     `discover`: ask the running bridge, else watch with a sidecar of our own

Only the certificate names are re-exported here: the HEMS simulator uses them and starts in
well under a second, so importing this package must not pull in the config loader (cattrs)
or urllib; the CLI imports `device` and `discovery` itself.
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

__all__ = [
    "CertificateError",
    "CertificatePair",
    "PairCheck",
    "PairFault",
    "ShipCredentials",
    "ShipSubject",
    "check_sidecar_pair",
    "create_ship_credentials",
    "load_certificate_pair",
    "ski_of",
    "write_credentials",
]
