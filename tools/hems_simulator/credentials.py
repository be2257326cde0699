"""Certificate and key files handled the way the real eebus_grpc_api handles them.

spec/wire.md lists what the real sidecar does with `-certificate-path`/`-private-key-path`:

- both exist: `INFO Certificate and private key already exist, skipping creation`, then it loads
  them with Go's tls.X509KeyPair; a pair that does not load is `ERROR Failed to load certificate
  and private key: <Go error>` and exit status 1;
- neither exists: `INFO Creating certificate and private key`, a self-signed SHIP certificate
  (subject OU = O = CN = "EVerest", C = "DE"), both files mode 0644;
- one exists: it writes the missing one, then `ERROR Failed to create certificate file "<path>",
  because it already exists` for the other and keeps running without a usable certificate;
- the folder is missing: `ERROR Failed to write certificate file "<path>"`, keeps running.

The checks themselves are the bridge's (eebus_bridge.pairing.certificates): they run in the
order X509KeyPair runs them, and each `PairFault` maps to the Go error text here. Where the
spec is silent, the simulator's choices: a certificate without a 20-byte SKI loads (Go's tls
does not look at it) and StartSetup then logs `ERROR Local SKI unavailable: ...` instead of
`INFO Local SKI: <ski>`; an unreadable file is Go's `open <path>: <reason>` load error.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from eebus_bridge.pairing import (
    CertificateError,
    PairFault,
    ShipSubject,
    create_ship_credentials,
    load_certificate_pair,
)

from .logs import SimLog

SIDECAR_SUBJECT = ShipSubject(
    common_name="EVerest", organization="EVerest", organizational_unit="EVerest", country="DE"
)
FILE_MODE = 0o644  # the real sidecar writes the key world-readable too


@attrs.frozen
class LocalCredentials:
    """What start-up made of the two files."""

    ski: str | None  # None: no usable certificate (the sidecar keeps running regardless)
    ski_problem: str = ""  # why ski is None, for the StartSetup log line
    exit_status: int | None = None  # 1: the real sidecar exits here


def _go_load_error(exc: CertificateError) -> str:
    """The text Go's tls.LoadX509KeyPair gives for the same fault."""
    texts = {
        PairFault.CERTIFICATE_NOT_PEM: "tls: failed to find any PEM data in certificate input",
        PairFault.CERTIFICATE_NO_BLOCK: 'tls: failed to find "CERTIFICATE" PEM block in '
        "certificate input after skipping PEM blocks of the following types: "
        f"[{exc.detail}]",
        PairFault.KEY_NOT_PEM: "tls: failed to find any PEM data in key input",
        PairFault.KEY_NO_BLOCK: 'tls: failed to find PEM block with type ending in "PRIVATE '
        'KEY" in key input after skipping PEM blocks of the following types: '
        f"[{exc.detail}]",
        PairFault.CERTIFICATE_MALFORMED: "x509: malformed certificate",
        PairFault.KEY_MALFORMED: "tls: failed to parse private key",
        PairFault.KEY_TYPE_MISMATCH: "tls: private key type does not match public key type",
        PairFault.KEY_MISMATCH: "tls: private key does not match public key",
    }
    return texts.get(exc.fault, f"open {exc.path}: {exc.detail}")


def load_or_create_credentials(
    certificate_path: Path, key_path: Path, log: SimLog
) -> LocalCredentials:
    if certificate_path.exists() and key_path.exists():
        log.info("Certificate and private key already exist, skipping creation")
        try:
            return LocalCredentials(ski=load_certificate_pair(certificate_path, key_path).ski)
        except CertificateError as exc:
            if exc.fault is PairFault.NO_SKI:
                return LocalCredentials(ski=None, ski_problem=exc.problem)
            log.error(f"Failed to load certificate and private key: {_go_load_error(exc)}")
            return LocalCredentials(ski=None, ski_problem=exc.problem, exit_status=1)
    log.info("Creating certificate and private key")
    credentials = create_ship_credentials(SIDECAR_SUBJECT)
    files = (
        (certificate_path, credentials.certificate_pem()),
        (key_path, credentials.private_key_pem()),
    )
    existing = [path for path, _ in files if path.exists()]
    written = 0
    for path, data in files:
        if path in existing:
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except OSError:
            log.error(f'Failed to write certificate file "{path}"')
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        written += 1
    for path in existing:
        log.error(f'Failed to create certificate file "{path}", because it already exists')
    if existing or written < len(files):
        return LocalCredentials(
            ski=None, ski_problem="the certificate and key could not both be written"
        )
    return LocalCredentials(ski=credentials.ski)
