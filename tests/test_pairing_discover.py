"""`eebus-bridge discover` as a real process: with its own sidecar (the HEMS simulator, started
through a wrapper like the bridge would start the real binary), against a v0.1.0 sidecar, with
the sidecar port taken, and asking a running bridge's status endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import pytest
import trio

from eebus_bridge.config import StatusConfig, load_config
from eebus_bridge.generated.control_service import ControlServiceStub
from eebus_bridge.island import open_island
from eebus_bridge.pairing.discovery import EnergyManager, allowlist_lines, describe, status_endpoint
from tests._bridge_fixtures import SIMULATOR, write_config
from tests._sim_fixtures import aio, open_grpc_channel, valid_config
from tools.hems_simulator import free_tcp_port, open_simulator_process

REPO = Path(__file__).resolve().parent.parent
DISCOVER = [sys.executable, "-m", "eebus_bridge", "discover"]
TRUSTED = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"
UNKNOWN = "aaaabbbbccccddddeeeeffff0000111122223333"
SCENARIO = f"""
description = "two energy managers on the network"
[eg]
ski = "{TRUSTED}"
brand = "Grid Operator"
model = "ControlBox"
device_type = "EnergyManagementSystem"
connect_delay_s = 0.1
[[other_eg]]
ski = "{UNKNOWN}"
brand = "Neighbour"
model = "HEMS 2"
device_type = "EnergyManagementSystem"
connect_delay_s = 0.3
"""


@attrs.frozen
class DiscoverSetup:
    folder: Path
    config: Path
    grpc_port: int

    @property
    def sidecar_pids(self) -> list[int]:
        path = self.folder / "sidecar.pids"
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def discover(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DISCOVER, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env={**os.environ, "EEBUS_SIM_PYTHON": sys.executable, **(env or {})},
            check=False,
        )


def make_setup(folder: Path, *, extra_flags: str = "") -> DiscoverSetup:
    (folder / "scenario.toml").write_text(SCENARIO)
    wrapper = folder / "sidecar.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$$" >> {folder / "sidecar.pids"}\n'
        f'exec {SIMULATOR} "$@" -scenario {folder / "scenario.toml"} {extra_flags}\n'
    )
    wrapper.chmod(0o755)
    port = free_tcp_port()
    config = write_config(
        folder,
        grpc_port=port,
        manage=True,
        eebus={"ems_ski_allowlist": [TRUSTED.upper()]},  # any spelling: compared normalised
        sidecar={"binary": str(wrapper)},
    )
    return DiscoverSetup(folder=folder, config=config, grpc_port=port)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[DiscoverSetup]:
    made = make_setup(tmp_path)
    yield made
    for pid in made.sidecar_pids:  # only if a test failed half-way
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_discover_lists_two_energy_managers_and_the_allowlist_line(setup: DiscoverSetup) -> None:
    nobody_listens = f"http://127.0.0.1:{free_tcp_port()}"  # no bridge: it runs its own sidecar

    result = setup.discover("--seconds", "3", "--status-url", nobody_listens)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "# watching for energy managers for 3 s ...",
        f"found  {TRUSTED}  Grid Operator ControlBox (EnergyManagementSystem)  already trusted",
        f"found  {UNKNOWN}  Neighbour HEMS 2 (EnergyManagementSystem)  not trusted yet",
        "# 2 energy manager(s) seen. Paste into [eebus]; remove every SKI that is not an energy "
        "manager you trust to limit this charger:",
        f'ems_ski_allowlist = ["{TRUSTED}", "{UNKNOWN}"]',
    ]
    (pid,) = setup.sidecar_pids
    assert not _alive(pid)  # the sidecar is gone with the command
    # The sidecar made the certificate pair at its first start (both missing before).
    assert (setup.folder / "eebus.crt").exists()
    assert (setup.folder / "eebus.key").exists()


def test_discover_with_a_v010_sidecar_says_so_and_does_not_hang(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, extra_flags="-legacy-v010")
    started = time.monotonic()

    result = setup.discover("--seconds", "120", "--status-url", "", timeout=60)

    assert time.monotonic() - started < 60  # far less than the 120 s it was asked to watch
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: {tmp_path / 'sidecar.sh'} has no SubscribeDiscoveryEvents (eebus_grpc_api "
        "v0.1.0 or older): discover needs v0.2.0 or newer. With this sidecar, read the energy "
        "manager's SKI from its own pairing screen"
    )
    assert "ems_ski_allowlist" not in result.stdout
    assert all(not _alive(pid) for pid in setup.sidecar_pids)


def test_discover_with_the_sidecar_port_taken(setup: DiscoverSetup) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", setup.grpc_port))
        squatter.listen()

        result = setup.discover("--seconds", "5", "--status-url", "")

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: port {setup.grpc_port} (eebus.grpc_port) is already in use by another program, "
        "so discover cannot start its own sidecar. If that is the running bridge, give its "
        "status endpoint (--status-url, or [status] listen) and discover asks it; otherwise "
        "stop that program or choose another eebus.grpc_port"
    )
    assert setup.sidecar_pids == []  # no sidecar was started


def test_discover_refuses_a_broken_certificate_pair(setup: DiscoverSetup) -> None:
    (setup.folder / "eebus.crt").write_text("not a certificate\n")
    (setup.folder / "eebus.key").write_text("not a key\n")

    result = setup.discover("--seconds", "5", "--status-url", "")

    assert result.returncode == 2
    assert result.stderr.startswith(f"error: sidecar.certificate: {setup.folder / 'eebus.crt'}")
    assert setup.sidecar_pids == []


# --------------------------------------------------------------------------- a running bridge


@attrs.define
class StatusServer:
    """Stands in for the running bridge's status endpoint (observability issue): GET
    /api/status with Bearer auth, answering JSON with `energy_managers`."""

    token: str
    managers: list[dict[str, object]]
    requests: list[tuple[str, str | None]] = attrs.Factory(list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization")
                server.requests.append((self.path, authorization))
                if authorization != f"Bearer {server.token}":
                    self.send_error(401)
                    return
                if self.path != "/api/status":
                    self.send_error(404)
                    return
                body = json.dumps({"state": "Init", "energy_managers": server.managers}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def status_server() -> Iterator[tuple[StatusServer, str]]:
    status = StatusServer(
        token="s3cret",
        managers=[
            {
                "ski": TRUSTED,
                "brand": "Grid Operator",
                "model": "ControlBox",
                "device_type": "EnergyManagementSystem",
                "trusted": True,
            },
            {
                "ski": UNKNOWN,
                "brand": "Neighbour",
                "model": "HEMS 2",
                "device_type": "EnergyManagementSystem",
                "trusted": False,
            },
        ],
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), status.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield status, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_discover_asks_the_running_bridge_first(
    setup: DiscoverSetup, status_server: tuple[StatusServer, str]
) -> None:
    status, url = status_server

    # A proxy setting must not divert the question (nothing listens on port 9).
    proxy = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = setup.discover("--status-url", url, "--token", "s3cret", "--seconds", "30", env=proxy)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"# energy managers the running bridge sees ({url}/api/status):",
        f"found  {TRUSTED}  Grid Operator ControlBox (EnergyManagementSystem)  already trusted",
        f"found  {UNKNOWN}  Neighbour HEMS 2 (EnergyManagementSystem)  not trusted yet",
        "# 2 energy manager(s) seen. Paste into [eebus]; remove every SKI that is not an energy "
        "manager you trust to limit this charger:",
        f'ems_ski_allowlist = ["{TRUSTED}", "{UNKNOWN}"]',
    ]
    assert status.requests == [("/api/status", "Bearer s3cret")]
    assert setup.sidecar_pids == []  # no sidecar of its own while the bridge runs


def test_discover_with_a_wrong_token(
    setup: DiscoverSetup, status_server: tuple[StatusServer, str]
) -> None:
    _, url = status_server

    result = setup.discover("--status-url", url, "--token", "wrong")

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: the running bridge at {url}/api/status refused the request (401): give its "
        "[status] token with --token"
    )
    assert setup.sidecar_pids == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8780", "http://127.0.0.1:8780/api/status"),
        ("127.0.0.1:9000/", "http://127.0.0.1:9000/api/status"),
        ("http://[::1]:8780/api/status", "http://[::1]:8780/api/status"),
        (None, "http://127.0.0.1:8780/api/status"),  # the status endpoint's default listen
        ("", None),
    ],
)
def test_status_endpoint(tmp_path: Path, url: str | None, expected: str | None) -> None:
    config = load_config(write_config(tmp_path, grpc_port=50051)).config
    # The test configs switch [status] off (parallel tests); here it is the default one.
    config = attrs.evolve(config, status=StatusConfig())
    endpoint = status_endpoint(config, url, None)
    assert (endpoint.url if endpoint is not None else None) == expected


# --------------------------------------------------------------------------- Ctrl-C, external


async def test_ctrl_c_ends_the_watch_and_still_prints_the_line(setup: DiscoverSetup) -> None:
    process = await trio.lowlevel.open_process(
        [*DISCOVER, "-c", str(setup.config), "--seconds", "300", "--status-url", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, "EEBUS_SIM_PYTHON": sys.executable},
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(60):
            while output.count(b"\nfound ") < 2:
                chunk = await process.stdout.receive_some()
                assert chunk, output
                output += chunk
            process.send_signal(signal.SIGINT)
            async for chunk in process.stdout:
                output += chunk
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert output.decode().splitlines()[-1] == f'ems_ski_allowlist = ["{TRUSTED}", "{UNKNOWN}"]'
    assert all(not _alive(pid) for pid in setup.sidecar_pids)


async def test_discover_at_an_external_sidecar_only_subscribes(tmp_path: Path) -> None:
    """[sidecar] manage = false: the bridge's sidecar is set up already; discover must not
    configure it again (that would leave it unusable for the bridge), only watch."""
    (tmp_path / "scenario.toml").write_text(SCENARIO)
    async with (
        open_island(),
        open_simulator_process(
            tmp_path, scenario=tmp_path / "scenario.toml", control=False
        ) as sidecar,
    ):
        async with open_grpc_channel(sidecar.port) as channel:  # what the bridge did
            control = ControlServiceStub(channel)
            await aio(control.set_config)(valid_config())
            await aio(control.start_setup)()
            await aio(control.start_service)()
        config = write_config(
            tmp_path, grpc_port=sidecar.port, manage=False, eebus={"ems_ski_allowlist": []}
        )
        result = await trio.run_process(
            [*DISCOVER, "-c", str(config), "--seconds", "3", "--status-url", ""],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO,
        )
        methods = [record["method"] for record in sidecar.records("rpc")]
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert (
        f"found  {TRUSTED}  Grid Operator ControlBox (EnergyManagementSystem)  not trusted yet"
        in lines
    )
    assert lines[-1] == f'ems_ski_allowlist = ["{TRUSTED}", "{UNKNOWN}"]'
    assert methods.count("SetConfig") == 1  # only the bridge's
    assert methods.count("StartService") == 1
    assert methods[-1] == "SubscribeDiscoveryEvents"


def test_allowlist_lines_keep_the_configured_skis_first() -> None:
    seen = [
        EnergyManager(UNKNOWN, "", "", "", trusted=False),
        EnergyManager(TRUSTED, "B", "M", "EnergyManagementSystem", trusted=True),
        EnergyManager(UNKNOWN, "", "", "", trusted=False),  # seen twice (gone and back)
    ]
    assert allowlist_lines([TRUSTED], seen)[-1] == f'ems_ski_allowlist = ["{TRUSTED}", "{UNKNOWN}"]'
    assert describe(seen[0]) == f"found  {UNKNOWN}  (no name)  not trusted yet"
    assert describe(seen[1], gone=True) == f"gone   {TRUSTED}  B M (EnergyManagementSystem)"
    assert allowlist_lines([], []) == [
        "# no energy manager seen; the configured allowlist is unchanged:",
        "ems_ski_allowlist = []",
    ]
