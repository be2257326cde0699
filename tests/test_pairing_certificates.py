"""`cert create`, `ski` and the certificate/key pair checks of `check-config` and `run`.

Everything runs the real command (a subprocess) on real files; certificates of other tools are
made by the real openssl, which also cross-checks the SKI we compute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from eebus_bridge import cli
from eebus_bridge.pairing import (
    CertificateError,
    PairFault,
    ShipSubject,
    create_ship_credentials,
    load_certificate_pair,
)
from eebus_bridge.ski import group_ski
from tests.test_cli import eebus_bridge
from tools.hems_simulator import free_tcp_port

OPENSSL = shutil.which("openssl")


@attrs.frozen
class CliResult:
    returncode: int
    stdout: str
    stderr: str


CliRun = Callable[..., CliResult]


@pytest.fixture
def cli_run(capsys: pytest.CaptureFixture[str]) -> Iterator[CliRun]:
    """`eebus-bridge ARGS` in this process (main() as the console script calls it): quicker
    than a subprocess; the tests that need a real process use eebus_bridge()."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str | Path) -> CliResult:
        code = cli.main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


needs_openssl = pytest.mark.skipif(
    OPENSSL is None and not os.environ.get("CI"), reason="openssl is not installed"
)


def write_config(folder: Path, *, manage: bool = False, **device: str) -> Path:
    device_lines = "\n".join(f'{key} = "{value}"' for key, value in device.items())
    config = folder / "bridge.toml"
    config.write_text(
        f"""
[device]
vendor_code = "ACME"
brand = "Acme Charging"
model = "Wallbox-7"
serial_number = "SN0042"
{device_lines}

[eebus]
accept_unknown_ems = true
grpc_port = {free_tcp_port()}  # `run` never talks to a sidecar someone else runs on 50051

[sidecar]
manage = {"true" if manage else "false"}
binary = "{sys.executable}"
certificate = "certs/eebus.crt"
private_key = "certs/eebus.key"

[[output]]
type = "jsonl"
"""
    )
    return config


def openssl(*args: str | Path, cwd: Path) -> str:
    assert OPENSSL is not None, "openssl is required here (.ci/run installs it)"
    result = subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, cwd=cwd, check=True
    )
    return result.stdout


def openssl_ski(certificate: Path) -> str:
    """The SKI extension as openssl prints it, as 40 lower-case hex digits."""
    text = openssl("x509", "-in", certificate, "-noout", "-ext", "subjectKeyIdentifier", cwd=Path())
    return text.splitlines()[1].strip().replace(":", "").lower()


def openssl_pair(folder: Path, *, with_ski: bool = True, pkcs8: bool = False) -> None:
    """An EC P-256 certificate and key made by openssl at certs/eebus.{crt,key}."""
    certs = folder / "certs"
    certs.mkdir(exist_ok=True)
    extension = "subjectKeyIdentifier=hash" if with_ski else "subjectKeyIdentifier=none"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "eebus.key", "-out", "eebus.crt", "-subj", "/CN=other-tool", "-days", "30",
        "-addext", extension, cwd=certs,
    )  # fmt: skip
    if not pkcs8:  # openssl 3 writes PKCS#8 ("PRIVATE KEY"); the sidecar's form is SEC 1
        openssl("ec", "-in", "eebus.key", "-out", "sec1.key", cwd=certs)
        (certs / "sec1.key").replace(certs / "eebus.key")


# --------------------------------------------------------------------------- cert create


def test_cert_create_writes_a_ship_certificate(tmp_path: Path) -> None:
    config = write_config(tmp_path, country="AT")
    before = datetime.now(UTC).replace(microsecond=0)

    result = eebus_bridge("cert", "create", "-c", config)

    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    ski = result.stdout.strip()
    certificate_path = tmp_path / "certs" / "eebus.crt"  # the folder was created
    key_path = tmp_path / "certs" / "eebus.key"
    certificate_pem, key_pem = certificate_path.read_bytes(), key_path.read_bytes()
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)

    # PEM labels: CERTIFICATE and EC PRIVATE KEY (SEC 1), nothing else in the files.
    assert certificate_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    # File modes: the key for the owner only.
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(certificate_path.stat().st_mode) == 0o644
    # ECDSA P-256 key that belongs to the certificate.
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    # Signature ECDSA-with-SHA256, self-signed (issuer = subject, signature verifies).
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    # Random serial number below 2^130.
    assert 0 < certificate.serial_number < 2**130
    # Valid from now for 10 years.
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    assert before <= not_before <= after
    if (not_before.month, not_before.day) == (2, 29):  # 1 March ten years on, as Go does
        assert not_after == not_before.replace(year=not_before.year + 10, month=3, day=1)
    else:
        assert not_after == not_before.replace(year=not_before.year + 10)
    # Key usage: digitalSignature only (critical).
    key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not any(
        getattr(key_usage.value, name)
        for name in (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        )
    )
    # Basic constraints present, CA = true.
    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is True
    # Subject: OU, O, C, CN from [device].
    subject = {attribute.oid: attribute.value for attribute in certificate.subject}
    assert subject == {
        NameOID.COMMON_NAME: "Wallbox-7-SN0042",
        NameOID.ORGANIZATION_NAME: "Acme Charging",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "Acme Charging",
        NameOID.COUNTRY_NAME: "AT",
    }
    # SKI: 20 bytes = SHA-1 of the uncompressed point 0x04 || X || Y.
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert len(point) == 65
    assert point[0] == 0x04
    digest = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert digest == hashlib.sha1(point).digest()
    assert ski == digest.hex()
    assert len(ski) == 40


def test_created_certificates_differ(cli_run: CliRun, tmp_path: Path) -> None:
    """Fresh key and serial every time (no fixed seed anywhere)."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for folder in (first, second):
        assert cli_run("cert", "create", "-c", write_config(folder)).returncode == 0
    certificates = [
        x509.load_pem_x509_certificate((folder / "certs/eebus.crt").read_bytes())
        for folder in (first, second)
    ]
    assert certificates[0].serial_number != certificates[1].serial_number
    assert certificates[0].public_key() != certificates[1].public_key()


@needs_openssl
def test_openssl_reads_the_same_ski(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    created = cli_run("cert", "create", "-c", config)
    assert created.returncode == 0, created.stderr

    assert openssl_ski(tmp_path / "certs" / "eebus.crt") == created.stdout.strip()
    # openssl also accepts the key as the certificate's (it checks the pair itself).
    modulus_check = openssl(
        "x509", "-in", "certs/eebus.crt", "-noout", "-pubkey", cwd=tmp_path
    ) == openssl("ec", "-in", "certs/eebus.key", "-pubout", cwd=tmp_path)
    assert modulus_check


def test_cert_create_refuses_to_overwrite_without_force(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert cli_run("cert", "create", "-c", config).returncode == 0
    certificate = tmp_path / "certs" / "eebus.crt"
    key = tmp_path / "certs" / "eebus.key"
    original = certificate.read_bytes(), key.read_bytes()

    refused = cli_run("cert", "create", "-c", config)

    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: sidecar.certificate: {certificate} already exists; use --force to replace the "
        "pair (a new key means a new SKI: energy managers must then be paired again)",
        f"error: sidecar.private_key: {key} already exists; use --force to replace the pair "
        "(a new key means a new SKI: energy managers must then be paired again)",
    ]
    assert (certificate.read_bytes(), key.read_bytes()) == original

    # One file alone is refused as well.
    certificate.unlink()
    alone = cli_run("cert", "create", "-c", config)
    assert alone.returncode == 2
    assert "sidecar.private_key" in alone.stderr
    assert "sidecar.certificate" not in alone.stderr
    assert key.read_bytes() == original[1]
    assert not certificate.exists()


def test_cert_create_force_replaces_the_pair(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = cli_run("cert", "create", "-c", config).stdout.strip()
    key = tmp_path / "certs" / "eebus.key"
    key.chmod(0o644)  # a loose mode is not carried over

    forced = cli_run("cert", "create", "--force", "-c", config)

    assert forced.returncode == 0, forced.stderr
    second = forced.stdout.strip()
    assert second != first
    assert f"replaced {key}" in forced.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cli_run("ski", "-c", config).stdout.strip() == second
    assert not [p.name for p in key.parent.iterdir() if p.name.endswith(".tmp")]


def test_country_must_be_two_upper_case_letters(cli_run: CliRun, tmp_path: Path) -> None:
    result = cli_run("cert", "create", "-c", write_config(tmp_path, country="de"))

    assert result.returncode == 2
    assert result.stderr == (
        'error: device.country: must be two upper-case letters (ISO 3166-1 alpha-2, e.g. "DE"), '
        'got "de"\n'
    )
    assert not (tmp_path / "certs").exists()


def test_country_defaults_to_de(cli_run: CliRun, tmp_path: Path) -> None:
    assert cli_run("cert", "create", "-c", write_config(tmp_path)).returncode == 0
    certificate = x509.load_pem_x509_certificate((tmp_path / "certs/eebus.crt").read_bytes())
    (country,) = certificate.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)
    assert country.value == "DE"


# --------------------------------------------------------------------------- ski


def test_ski_formats(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ski = cli_run("cert", "create", "-c", config).stdout.strip()

    plain = cli_run("ski", "-c", config)
    grouped = cli_run("ski", "-c", config, "--format", "grouped")
    as_json = cli_run("ski", "--format", "json", "-c", config)

    assert (plain.returncode, plain.stdout, plain.stderr) == (0, f"{ski}\n", "")
    assert grouped.stdout == " ".join(ski[i : i + 4] for i in range(0, 40, 4)) + "\n"
    assert grouped.stdout.count(" ") == 9
    assert json.loads(as_json.stdout) == {
        "ski": ski,
        "grouped": group_ski(ski),
        "certificate": str(tmp_path / "certs" / "eebus.crt"),
    }


@needs_openssl
@pytest.mark.parametrize("pkcs8", [False, True], ids=["sec1-key", "pkcs8-key"])
def test_ski_of_an_openssl_certificate(cli_run: CliRun, tmp_path: Path, pkcs8: bool) -> None:
    openssl_pair(tmp_path, pkcs8=pkcs8)
    config = write_config(tmp_path)

    result = cli_run("ski", "-c", config)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == openssl_ski(tmp_path / "certs" / "eebus.crt")


@needs_openssl
def test_ski_of_a_certificate_without_ski_is_an_error(cli_run: CliRun, tmp_path: Path) -> None:
    openssl_pair(tmp_path, with_ski=False)
    config = write_config(tmp_path)

    result = cli_run("ski", "-c", config)

    certificate = tmp_path / "certs" / "eebus.crt"
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: sidecar.certificate: {certificate} cannot be used for EEBUS: it has no Subject "
        "Key Identifier extension; EEBUS names a device by this 20-byte SKI (make a SHIP "
        "certificate with `eebus-bridge cert create`)\n"
    )


def test_ski_of_a_missing_certificate(cli_run: CliRun, tmp_path: Path) -> None:
    result = cli_run("ski", "-c", write_config(tmp_path))

    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: sidecar.certificate: {tmp_path / 'certs' / 'eebus.crt'} does not exist yet; "
        "create it with `eebus-bridge cert create -c CONFIG`"
    )


def test_ski_of_a_file_that_is_not_pem(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli_run("cert", "create", "-c", config)
    certificate = tmp_path / "certs" / "eebus.crt"
    certificate.write_bytes(b"\x30\x82\x01\x00 DER bytes, not PEM")

    result = cli_run("ski", "-c", config)

    assert result.returncode == 2
    assert result.stderr == (
        f"error: sidecar.certificate: {certificate} is not a PEM file "
        "(no -----BEGIN CERTIFICATE----- line)\n"
    )


def _swap_in_a_foreign_key(folder: Path) -> Path:
    """Replace certs/eebus.key by the key of another SHIP pair."""
    key = folder / "certs" / "eebus.key"
    other = create_ship_credentials(ShipSubject("other", "O", "OU", "DE"))
    key.write_bytes(other.private_key_pem())
    return key


def mismatch_line(folder: Path) -> str:
    key, certificate = folder / "certs" / "eebus.key", folder / "certs" / "eebus.crt"
    return (
        f"error: sidecar.private_key: {key} does not belong to the certificate {certificate} "
        "(their public keys differ); the sidecar would exit at once. Restore the matching key, "
        "or make a new pair with `eebus-bridge cert create --force` (and pair again)\n"
    )


def test_ski_with_a_key_that_does_not_match(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli_run("cert", "create", "-c", config)
    _swap_in_a_foreign_key(tmp_path)

    result = cli_run("ski", "-c", config)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == mismatch_line(tmp_path)


# --------------------------------------------------------------------------- check-config, run


def test_check_config_reports_a_mismatched_key(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli_run("cert", "create", "-c", config)
    _swap_in_a_foreign_key(tmp_path)

    result = cli_run("check-config", "-c", config)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == mismatch_line(tmp_path)


def test_check_config_reports_a_lone_certificate_for_a_managed_sidecar(
    cli_run: CliRun, tmp_path: Path
) -> None:
    config = write_config(tmp_path, manage=True)
    cli_run("cert", "create", "-c", config)
    (tmp_path / "certs" / "eebus.key").unlink()

    result = cli_run("check-config", "-c", config)

    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: sidecar.private_key: {tmp_path / 'certs' / 'eebus.key'} does not exist, but "
        f"{tmp_path / 'certs' / 'eebus.crt'} does; the sidecar would then run without a usable "
        "certificate."
    )


def test_check_config_accepts_no_pair_yet_and_a_good_pair(cli_run: CliRun, tmp_path: Path) -> None:
    config = write_config(tmp_path, manage=True)
    assert cli_run("check-config", "-c", config).returncode == 0  # the sidecar creates it
    cli_run("cert", "create", "-c", config)
    assert cli_run("check-config", "-c", config).returncode == 0


def test_run_refuses_a_mismatched_pair(tmp_path: Path) -> None:
    config = write_config(tmp_path, manage=True)
    eebus_bridge("cert", "create", "-c", config)
    _swap_in_a_foreign_key(tmp_path)

    result = eebus_bridge("run", "-c", config)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == mismatch_line(tmp_path)


def test_run_logs_the_local_ski_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # external sidecar that never answers: the bridge waits
    ski = eebus_bridge("cert", "create", "-c", config).stdout.strip()
    log = tmp_path / "bridge.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "eebus_bridge", "run", "-c", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        expected = f"local SKI {ski} (from {tmp_path / 'certs' / 'eebus.crt'})"
        deadline = time.monotonic() + 30
        while expected not in log.read_text() and process.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert expected in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert log.read_text().count("local SKI") == 1


# --------------------------------------------------------------------------- module level


@pytest.mark.parametrize(
    ("certificate_text", "key_text", "fault"),
    [
        ("not pem at all", None, PairFault.CERTIFICATE_NOT_PEM),
        ("-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n", None,
         PairFault.CERTIFICATE_NO_BLOCK),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None,
         PairFault.CERTIFICATE_MALFORMED),
        (None, "junk", PairFault.KEY_NOT_PEM),
        (None, "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
         PairFault.KEY_NO_BLOCK),
        (None, "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
         PairFault.KEY_MALFORMED),
    ],
)  # fmt: skip
def test_each_fault_is_named(
    cli_run: CliRun,
    tmp_path: Path,
    certificate_text: str | None,
    key_text: str | None,
    fault: PairFault,
) -> None:
    config = write_config(tmp_path)
    cli_run("cert", "create", "-c", config)
    certificate, key = tmp_path / "certs" / "eebus.crt", tmp_path / "certs" / "eebus.key"
    if certificate_text is not None:
        certificate.write_text(certificate_text)
    if key_text is not None:
        key.write_text(key_text)

    with pytest.raises(CertificateError) as caught:
        load_certificate_pair(certificate, key)

    assert caught.value.fault is fault
    assert str(caught.value.path) in caught.value.problem


def test_validity_end_on_29_february() -> None:
    subject = ShipSubject("CN", "O", "OU", "DE")
    leap_day = datetime(2028, 2, 29, 12, 0, tzinfo=UTC)
    certificate = create_ship_credentials(subject, now=leap_day).certificate
    assert certificate.not_valid_after_utc == datetime(2038, 3, 1, 12, 0, tzinfo=UTC)
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc > timedelta(days=3650)
