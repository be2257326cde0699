"""The simulator treats -certificate-path/-private-key-path like the real sidecar (spec/wire.md):
real SHIP certificates when both are missing, Go's load errors and exit status 1 for a pair
that does not load, and the broken-but-running cases (one file only, no folder)."""

from __future__ import annotations

import io
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from eebus_bridge.generated.control_service import ControlServiceStub
from eebus_bridge.island import open_island
from eebus_bridge.pairing import ShipSubject, create_ship_credentials, load_certificate_pair
from tests._sim_fixtures import aio, open_grpc_channel, valid_config
from tools.hems_simulator.cli import main
from tools.hems_simulator.credentials import load_or_create_credentials
from tools.hems_simulator.logs import StdoutLog
from tools.hems_simulator.process import open_simulator_process

SUBJECT = ShipSubject("Wallbox-SN1", "Acme", "Acme", "DE")


def write_pair(folder: Path) -> tuple[Path, Path]:
    certificate, key = folder / "c.pem", folder / "k.pem"
    credentials = create_ship_credentials(SUBJECT)
    certificate.write_bytes(credentials.certificate_pem())
    key.write_bytes(credentials.private_key_pem())
    return certificate, key


def run_main(certificate: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI in-process up to the point where it would serve (these cases never get there)."""
    code = main(
        ["-port", "1", "-certificate-path", str(certificate), "-private-key-path", str(key)]
    )
    return code, capsys.readouterr().out


def log_lines(stream: io.StringIO) -> list[str]:
    """The messages of sidecar-shaped lines ("LEVEL message"), without the time stamp."""
    return [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]


async def test_missing_pair_becomes_a_ship_certificate_and_its_ski_is_logged(
    tmp_path: Path,
) -> None:
    async with (
        open_island(),
        open_simulator_process(tmp_path, control=False, record=False) as process,
    ):
        pair = load_certificate_pair(process.cert_path, process.key_path)  # usable, matching
        async with open_grpc_channel(process.port) as channel:
            control = ControlServiceStub(channel)
            await aio(control.set_config)(valid_config())
            await aio(control.start_setup)()
        await process.wait_for_line(f"INFO Local SKI: {pair.ski}$", timeout=15)
    assert "INFO Creating certificate and private key" in "\n".join(process.stdout_lines)
    subject = {attribute.oid: attribute.value for attribute in pair.certificate.subject}
    assert subject == {
        NameOID.COUNTRY_NAME: "DE",
        NameOID.ORGANIZATION_NAME: "EVerest",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "EVerest",
        NameOID.COMMON_NAME: "EVerest",
    }
    for path in (process.cert_path, process.key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as the real sidecar writes both
    assert process.key_path.read_text().startswith("-----BEGIN EC PRIVATE KEY-----\n")
    basic = pair.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is True


def test_existing_pair_is_loaded_and_kept(tmp_path: Path) -> None:
    certificate, key = write_pair(tmp_path)
    before = certificate.read_bytes(), key.read_bytes()
    stream = io.StringIO()

    loaded = load_or_create_credentials(certificate, key, StdoutLog(stream=stream))

    assert log_lines(stream) == [
        "INFO Certificate and private key already exist, skipping creation"
    ]
    assert loaded.ski == load_certificate_pair(certificate, key).ski
    assert loaded.exit_status is None
    assert (certificate.read_bytes(), key.read_bytes()) == before


def test_mismatched_pair_exits_1_like_the_real_sidecar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = write_pair(tmp_path)
    key.write_bytes(create_ship_credentials(SUBJECT).private_key_pem())

    code, out = run_main(certificate, key, capsys)

    assert code == 1
    assert out.splitlines()[-1].endswith(
        " ERROR Failed to load certificate and private key: "
        "tls: private key does not match public key"
    )


def test_pair_that_is_not_pem_exits_1_like_the_real_sidecar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = tmp_path / "c.pem", tmp_path / "k.pem"
    certificate.write_text("mine\n")
    key.write_text("my key\n")

    code, out = run_main(certificate, key, capsys)

    assert code == 1
    assert out.splitlines()[-1].endswith(
        " ERROR Failed to load certificate and private key: "
        "tls: failed to find any PEM data in certificate input"
    )
    assert certificate.read_text() == "mine\n"  # never overwritten


def test_pkcs8_key_is_accepted(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    credentials = create_ship_credentials(SUBJECT)
    certificate, key = tmp_path / "c.pem", tmp_path / "k.pem"
    certificate.write_bytes(credentials.certificate_pem())
    key.write_bytes(
        credentials.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    loaded = load_or_create_credentials(certificate, key, StdoutLog(stream=io.StringIO()))

    assert (loaded.ski, loaded.exit_status) == (credentials.ski, None)


@pytest.mark.parametrize("present", ["certificate", "key"])
def test_one_file_alone_writes_the_other_and_keeps_running_broken(
    tmp_path: Path, present: str
) -> None:
    certificate, key = write_pair(tmp_path)
    kept, removed = (certificate, key) if present == "certificate" else (key, certificate)
    removed.unlink()
    kept_bytes = kept.read_bytes()
    stream = io.StringIO()

    loaded = load_or_create_credentials(certificate, key, StdoutLog(stream=stream))

    assert log_lines(stream) == [
        "INFO Creating certificate and private key",
        f'ERROR Failed to create certificate file "{kept}", because it already exists',
    ]
    assert removed.exists()  # written, but it belongs to a pair whose other half was not
    assert kept.read_bytes() == kept_bytes
    assert (loaded.ski, loaded.exit_status) == (None, None)  # keeps running, no usable SKI


async def test_missing_folder_keeps_running_without_a_certificate(tmp_path: Path) -> None:
    certificate = tmp_path / "nodir" / "c.pem"
    async with open_simulator_process(
        tmp_path, control=False, record=False, extra_args=["-certificate-path", str(certificate)]
    ) as process:
        await process.wait_for_line(
            re.escape(f'ERROR Failed to write certificate file "{certificate}"'), timeout=10
        )
        assert process.process.returncode is None  # serving, as the real one does
    assert not certificate.parent.exists()
