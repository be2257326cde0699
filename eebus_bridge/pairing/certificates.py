"""SHIP certificates: create them, read this device's SKI from them, check a certificate/key pair.

EEBUS names a device by the Subject Key Identifier (SKI) of its self-signed SHIP certificate:
20 bytes, the SHA-1 of the public key as an uncompressed point (0x04 ‖ X ‖ Y). The energy
manager stores ours, we store theirs (`ems_ski_allowlist`). A certificate without such an SKI
cannot be paired, and a key that does not belong to the certificate makes the sidecar exit at
once (spec/wire.md), so that every caller looks at a pair the same way, this module is the one
place that reads the files:

- `ski`, `check-config`, `run` and `discover` turn a `CertificateError` into one problem line
  (`CertificateError.problem`) and refuse (exit 2);
- the HEMS simulator maps the same `PairFault` to the real sidecar's Go error texts and exit
  behaviour (tools/hems_simulator/credentials.py).

The checks run in the order Go's `tls.X509KeyPair` runs them (certificate PEM, key PEM,
certificate parse, key parse, key match), so both views name the same first problem; the SKI
check comes last (Go does not look at it, EEBUS does).

Created certificates follow the SHIP rules of the pairing issue: ECDSA P-256 key, signed with
ECDSA-SHA256, random serial below 2^130, valid from now for 10 calendar years, key usage
digitalSignature and basic constraints CA=true (both critical, as Go's x509 writes them), subject
C, O, OU, CN in that order (Go's order), SKI extension = SHA-1 of the uncompressed point.
Files are PEM `CERTIFICATE` and `EC PRIVATE KEY`; each is written to a temporary file in the
target folder and renamed into place, so a crash never leaves half a key behind.
"""

from __future__ import annotations

import enum
import os
import re
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

SKI_BYTES = 20
SERIAL_BITS = 130  # serial numbers are random and below 2^130
VALIDITY_YEARS = 10
CERTIFICATE_MODE = 0o644
PRIVATE_KEY_MODE = 0o600

_PEM_LABEL = re.compile(rb"-----BEGIN ([^\r\n-]*)-----")


class PairFault(enum.Enum):
    """What is wrong with a certificate/key pair, in the order the checks run."""

    CERTIFICATE_UNREADABLE = "certificate unreadable"  # missing, a folder, no permission
    KEY_UNREADABLE = "key unreadable"
    CERTIFICATE_NOT_PEM = "certificate not PEM"  # no PEM block at all
    CERTIFICATE_NO_BLOCK = "no CERTIFICATE block"  # PEM, but other block types only
    KEY_NOT_PEM = "key not PEM"
    KEY_NO_BLOCK = "no PRIVATE KEY block"
    CERTIFICATE_MALFORMED = "certificate malformed"
    KEY_MALFORMED = "key malformed"  # also: encrypted, or an algorithm we cannot read
    KEY_TYPE_MISMATCH = "key type mismatch"  # e.g. an RSA key for an EC certificate
    KEY_MISMATCH = "key mismatch"
    NO_SKI = "no usable SKI"


class CertificateError(Exception):
    """A certificate or key file that cannot be used; `problem` is the line users see."""

    def __init__(self, fault: PairFault, path: Path, problem: str, detail: str = "") -> None:
        super().__init__(problem)
        self.fault = fault
        self.path = path
        self.problem = problem
        self.detail = detail  # what the library said, or the other block types seen


@attrs.frozen
class ShipSubject:
    """Who the certificate names. From `[device]`: CN = "<model>-<serial>", O = OU = brand."""

    common_name: str
    organization: str
    organizational_unit: str
    country: str


@attrs.frozen
class ShipCredentials:
    """A certificate and its private key (in memory)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def ski(self) -> str:
        return ski_of(self.certificate)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        # TraditionalOpenSSL gives "EC PRIVATE KEY" (SEC 1), the form the sidecar writes.
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


@attrs.frozen
class CertificatePair:
    """A pair that passed every check."""

    certificate: x509.Certificate
    ski: str  # 40 lower-case hex digits


# --------------------------------------------------------------------------- creating


def create_ship_credentials(
    subject: ShipSubject, *, now: datetime | None = None
) -> ShipCredentials:
    """A new self-signed SHIP certificate with a fresh ECDSA P-256 key."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, subject.country),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject.organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, subject.organizational_unit),
            x509.NameAttribute(NameOID.COMMON_NAME, subject.common_name),
        ]
    )
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(now)
        .not_valid_after(_years_later(now, VALIDITY_YEARS))
        .add_extension(key_usage, critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # from_public_key hashes the subjectPublicKey bits: for EC, the uncompressed point.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ShipCredentials(certificate=certificate, private_key=key)


def _random_serial() -> int:
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:  # X.509 wants a positive serial
            return serial


def _years_later(moment: datetime, years: int) -> datetime:
    """Calendar years later; 29 February becomes 1 March (Go's AddDate does the same)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, month=3, day=1)


def write_credentials(
    credentials: ShipCredentials,
    certificate_path: Path,
    key_path: Path,
    *,
    key_mode: int = PRIVATE_KEY_MODE,
    certificate_mode: int = CERTIFICATE_MODE,
) -> None:
    """Write both files (folders created), replacing existing ones; the key first."""
    _write_atomically(key_path, credentials.private_key_pem(), key_mode)
    _write_atomically(certificate_path, credentials.certificate_pem(), certificate_mode)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so a key is never readable by others, not even briefly.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading


class UnusableSki(ValueError):
    """A certificate without a 20-byte SKI; the message says what is wrong with it."""


def ski_of(certificate: x509.Certificate) -> str:
    """The SKI extension's 20 bytes as 40 lower-case hex digits; UnusableSki if there is none."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise UnusableSki("it has no Subject Key Identifier extension") from None
    except ValueError as exc:  # an extension cryptography cannot parse
        raise UnusableSki(f"its extensions cannot be read ({exc})") from None
    digest = extension.value.digest
    if len(digest) != SKI_BYTES:
        raise UnusableSki(f"its Subject Key Identifier has {len(digest)} bytes, not {SKI_BYTES}")
    return digest.hex()


def load_certificate_pair(certificate_path: Path, key_path: Path) -> CertificatePair:
    """Read and check both files; raises CertificateError naming the first problem."""
    certificate_pem = _read(certificate_path, PairFault.CERTIFICATE_UNREADABLE, "certificate")
    key_pem = _read(key_path, PairFault.KEY_UNREADABLE, "private key")
    _check_certificate_pem(certificate_path, certificate_pem)
    key_block = _private_key_block(key_path, key_pem)
    certificate = _parse_certificate(certificate_path, certificate_pem)
    key = _parse_private_key(key_path, key_block)
    _check_match(certificate, certificate_path, key, key_path)
    try:
        ski = ski_of(certificate)
    except UnusableSki as exc:
        raise CertificateError(
            PairFault.NO_SKI,
            certificate_path,
            f"{certificate_path} cannot be used for EEBUS: {exc}; EEBUS names a device "
            "by this 20-byte SKI (make a SHIP certificate with `eebus-bridge cert create`)",
        ) from None
    return CertificatePair(certificate=certificate, ski=ski)


def _read(path: Path, fault: PairFault, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        reason = "does not exist"
    except IsADirectoryError:
        reason = "is a directory"
    except PermissionError:
        reason = "cannot be read (permission denied)"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    raise CertificateError(fault, path, f"{what} {path} {reason}", reason)


def _pem_labels(data: bytes) -> list[str]:
    return [label.decode("ascii", "replace") for label in _PEM_LABEL.findall(data)]


def _check_certificate_pem(path: Path, data: bytes) -> None:
    labels = _pem_labels(data)
    if not labels:
        raise CertificateError(
            PairFault.CERTIFICATE_NOT_PEM,
            path,
            f"{path} is not a PEM file (no -----BEGIN CERTIFICATE----- line)",
        )
    if "CERTIFICATE" not in labels:
        raise CertificateError(
            PairFault.CERTIFICATE_NO_BLOCK,
            path,
            f"{path} holds no CERTIFICATE block, only {', '.join(labels)}",
            detail=" ".join(labels),
        )


def _private_key_block(path: Path, data: bytes) -> bytes:
    """The first PEM block whose type ends in "PRIVATE KEY" (the block Go's tls takes)."""
    labels = _pem_labels(data)
    if not labels:
        raise CertificateError(
            PairFault.KEY_NOT_PEM,
            path,
            f"{path} is not a PEM file (no -----BEGIN EC PRIVATE KEY----- line)",
        )
    for label in labels:
        if label.endswith("PRIVATE KEY"):
            escaped = re.escape(label.encode())
            match = re.search(
                rb"-----BEGIN " + escaped + rb"-----.*?-----END " + escaped + rb"-----",
                data,
                re.DOTALL,
            )
            if match is not None:
                return match.group(0)
    raise CertificateError(
        PairFault.KEY_NO_BLOCK,
        path,
        f"{path} holds no private key block, only {', '.join(labels)}",
        detail=" ".join(labels),
    )


def _parse_certificate(path: Path, data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError as exc:
        raise CertificateError(
            PairFault.CERTIFICATE_MALFORMED,
            path,
            f"{path} holds a CERTIFICATE block that is not a valid X.509 certificate",
            str(exc),
        ) from None


_PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | dsa.DSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _parse_private_key(path: Path, block: bytes) -> object:
    try:
        return serialization.load_pem_private_key(block, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        reason = "is encrypted; the sidecar needs an unencrypted key"
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = f"cannot be read as a private key ({_first_line(str(exc))})"
    raise CertificateError(PairFault.KEY_MALFORMED, path, f"{path} {reason}", reason)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown format"


def _key_family(key: object) -> str:
    families: tuple[tuple[type[object] | tuple[type[object], ...], str], ...] = (
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "EC"),
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "RSA"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "DSA"),
        ((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "Ed25519"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448"),
    )
    return next((name for classes, name in families if isinstance(key, classes)), "unknown")


def _check_match(
    certificate: x509.Certificate, certificate_path: Path, key: object, key_path: Path
) -> None:
    public = certificate.public_key()
    certificate_family, key_family = _key_family(public), _key_family(key)
    if certificate_family != key_family or not isinstance(key, _PrivateKey):
        raise CertificateError(
            PairFault.KEY_TYPE_MISMATCH,
            key_path,
            f"{key_path} is a {key_family} key, but the certificate {certificate_path} holds "
            f"a {certificate_family} public key: the key does not belong to the certificate",
        )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != public.public_bytes(der, spki):
        raise CertificateError(
            PairFault.KEY_MISMATCH,
            key_path,
            f"{key_path} does not belong to the certificate {certificate_path} (their public "
            "keys differ); the sidecar would exit at once. Restore the matching key, or make "
            "a new pair with `eebus-bridge cert create --force` (and pair again)",
        )


# --------------------------------------------------------------------------- the configured pair

_KEY_FAULTS = frozenset(
    {
        PairFault.KEY_UNREADABLE,
        PairFault.KEY_NOT_PEM,
        PairFault.KEY_NO_BLOCK,
        PairFault.KEY_MALFORMED,
        PairFault.KEY_TYPE_MISMATCH,
        PairFault.KEY_MISMATCH,
    }
)


@attrs.frozen
class PairCheck:
    """The configured pair as the bridge sees it before starting the sidecar.

    Both files missing is fine (the sidecar creates a pair at its first start): ski is None and
    there are no problems. Problems start with the config key they concern.
    """

    ski: str | None
    problems: tuple[str, ...] = ()

    @property
    def missing(self) -> bool:
        return self.ski is None and not self.problems


def problem_line(exc: CertificateError) -> str:
    """`sidecar.certificate: ...` or `sidecar.private_key: ...`, as config problems read."""
    key = "sidecar.private_key" if exc.fault in _KEY_FAULTS else "sidecar.certificate"
    return f"{key}: {exc.problem}"


def check_sidecar_pair(certificate_path: Path, key_path: Path) -> PairCheck:
    """Both files or neither, and a usable, matching pair (spec/wire.md: the sidecar exits on
    a mismatched or non-PEM pair and keeps running broken when only one file exists)."""
    certificate_exists, key_exists = certificate_path.exists(), key_path.exists()
    if not certificate_exists and not key_exists:
        return PairCheck(ski=None)
    if certificate_exists != key_exists:
        present, absent = (
            (certificate_path, key_path) if certificate_exists else (key_path, certificate_path)
        )
        key = "sidecar.private_key" if certificate_exists else "sidecar.certificate"
        return PairCheck(
            ski=None,
            problems=(
                f"{key}: {absent} does not exist, but {present} does; the sidecar would then "
                "run without a usable certificate. Restore the missing file, or make a new "
                "pair with `eebus-bridge cert create --force` (and pair again)",
            ),
        )
    try:
        pair = load_certificate_pair(certificate_path, key_path)
    except CertificateError as exc:
        return PairCheck(ski=None, problems=(problem_line(exc),))
    return PairCheck(ski=pair.ski)
