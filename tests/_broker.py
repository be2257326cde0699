"""A real mosquitto broker for tests, plus an MQTT subscriber that records what arrives.

Each broker runs as a subprocess with its own config in a temporary folder, listening on
127.0.0.1 only: a plain MQTT (TCP) listener, a WebSockets listener and a unix socket. It can be
stopped and started again on the same ports, which is how tests simulate a broker restart.
Ports are found by binding port 0 and closing it again; if mosquitto then cannot bind (another
process was quicker) it exits, and `start()` retries with fresh ports before the first start.

Use it as `async with running_mosquitto(tmp_path) as broker:` or through a module's fixture.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import trio

from eebus_bridge.sinks.mqtt import (
    MqttConnection,
    MqttError,
    MqttMessage,
    MqttSettings,
    open_mqtt_connection,
)
from tools.hems_simulator import terminate

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


# Without mosquitto the broker tests are skipped on a developer's machine, but never in CI
# (CI=true): there a missing broker must fail loudly instead of passing silently.
requires_mosquitto = pytest.mark.skipif(
    not mosquitto_available() and not os.environ.get("CI"),
    reason="mosquitto is not installed (apt-get install mosquitto)",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _port_accepts(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


@attrs.define
class MosquittoBroker:
    workdir: Path
    users: dict[str, str] = attrs.field(factory=dict)  # non-empty = password file, no anonymous
    # Keep sessions (subscriptions, queued QoS 1 messages) across a restart: a subscriber with
    # clean_session=False then misses nothing published while it was reconnecting.
    persistence: bool = False
    tls: bool = False  # add a TLS listener (certificates made with openssl, CA in ca.crt)
    tls_port: int = 0
    tcp_port: int = 0
    ws_port: int = 0
    unix_path: Path | None = None
    process: trio.Process | None = None
    starts: int = 0

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def settings(
        self, transport: Literal["tcp", "websockets", "unix"] = "tcp", **changes: Any
    ) -> MqttSettings:
        """Client settings pointing at this broker over the given transport."""
        port = {"tcp": self.tcp_port, "websockets": self.ws_port, "unix": 1883}[transport]
        if "tls" in changes and transport == "tcp":
            port = self.tls_port
        base = MqttSettings(
            host="127.0.0.1",
            port=port,
            transport=transport,
            unix_path=self.unix_path,
            ws_path="/mqtt",
            client_id=f"test-{os.getpid()}-{id(self)}",
            keepalive_s=10,
            connect_timeout_s=5.0,
        )
        return attrs.evolve(base, **changes)

    async def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            "persistence true" if self.persistence else "persistence false",
            f"persistence_location {self.workdir}/",
            "user root",  # only matters when run as root: do not switch to user mosquitto
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"listener {self.tcp_port} 127.0.0.1",
            f"listener {self.ws_port} 127.0.0.1",
            "protocol websockets",
            f"listener 0 {self.unix_path}",
        ]
        if self.tls:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.ca_file}",
                f"certfile {self.workdir / 'server.crt'}",
                f"keyfile {self.workdir / 'server.key'}",
            ]
        if self.users:
            password_file = self.workdir / "passwords"
            password_file.unlink(missing_ok=True)
            for user, password in self.users.items():
                flags = ["-b"] if password_file.exists() else ["-b", "-c"]
                await trio.run_process(
                    [MOSQUITTO_PASSWD, *flags, str(password_file), user, password],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    async def _make_certificates(self) -> None:
        """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast to make)."""
        d = self.workdir
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        (d / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
        commands = [
            ["req", "-x509", *key, "-keyout", d / "ca.key", "-out", self.ca_file, "-days", "2",
             "-subj", "/CN=eebus-bridge test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", *key, "-keyout", d / "server.key", "-out", d / "server.csr",
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", d / "server.csr", "-CA", self.ca_file, "-CAkey", d / "ca.key",
             "-CAcreateserial", "-out", d / "server.crt", "-days", "2",
             "-extfile", d / "server.ext"],
        ]  # fmt: skip
        for command in commands:
            await trio.run_process(
                ["openssl", *map(str, command)], stdout=subprocess.DEVNULL, capture_stderr=True
            )

    async def start(self) -> None:
        """Start mosquitto (new ports on the first start, the same ports afterwards)."""
        if self.process is not None:
            raise RuntimeError("mosquitto is already running")
        if self.tls and not self.ca_file.exists():
            await self._make_certificates()
        attempts = 3 if self.starts == 0 else 1
        for attempt in range(attempts):
            if self.starts == 0:
                self.tcp_port, self.ws_port, self.tls_port = free_port(), free_port(), free_port()
                # unix socket paths are limited to ~108 bytes: keep it short
                self.unix_path = Path(tempfile.mkdtemp(prefix="mq")) / "s"
            await self._write_config()
            if await self._launch():
                self.starts += 1
                return
            if attempt + 1 == attempts:
                raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")

    async def _launch(self) -> bool:
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        with trio.move_on_after(_START_TIMEOUT_S):
            while self.process.returncode is None:
                ports = [self.tcp_port, self.ws_port] + ([self.tls_port] if self.tls else [])
                if all([await _port_accepts(port) for port in ports]):
                    return True
                await trio.sleep(0.02)
        await self.stop()
        return False

    async def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL); clients see their connections end."""
        process, self.process = self.process, None
        if process is not None:
            await terminate(process, grace=_STOP_TIMEOUT_S)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def cleanup(self) -> None:
        if self.unix_path is not None:
            shutil.rmtree(self.unix_path.parent, ignore_errors=True)


@asynccontextmanager
async def running_mosquitto(
    workdir: Path,
    users: dict[str, str] | None = None,
    *,
    persistence: bool = False,
    tls: bool = False,
) -> AsyncIterator[MosquittoBroker]:
    broker = MosquittoBroker(
        workdir=workdir, users=dict(users or {}), persistence=persistence, tls=tls
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()
        broker.cleanup()


# -- waiting without sleeping on luck ---------------------------------------------------------


class Changes:
    """A pulse for "something was recorded"; `wait_until` re-checks a condition on each."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def pulse(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], within_s: float = 5.0) -> None:
        with trio.fail_after(within_s):
            while not condition():
                await self._event.wait()


class LogWatcher(logging.Handler):
    """Keeps the log records of a logger tree and pulses on each, so a test can wait for a
    line to appear (`await logs.wait_for(...)`) instead of sleeping and hoping."""

    def __init__(self, logger_name: str = "eebus_bridge") -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changes = Changes()
        self._logger = logging.getLogger(logger_name)

    def __enter__(self) -> LogWatcher:
        self._logger.addHandler(self)
        self._saved_level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved_level)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changes.pulse()

    def matching(self, level: int, text: str) -> list[str]:
        return [
            record.getMessage()
            for record in self.records
            if record.levelno == level and text in record.getMessage()
        ]

    async def wait_for(
        self, level: int, text: str, count: int = 1, within_s: float = 5.0
    ) -> list[str]:
        await self.changes.wait_until(lambda: len(self.matching(level, text)) >= count, within_s)
        return self.matching(level, text)


@attrs.frozen
class Received:
    at: float  # trio.current_time()
    message: MqttMessage


class Recorder:
    """An MQTT subscriber (our own MqttConnection) that keeps every message with its time."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.changes = Changes()
        self.connection: MqttConnection | None = None
        self.connects = 0

    def on(self, topic: str) -> list[Received]:
        return [item for item in self.received if item.message.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [item.message.payload for item in self.on(topic)]

    async def wait_for_count(self, topic: str, count: int, within_s: float = 5.0) -> None:
        await self.changes.wait_until(lambda: len(self.on(topic)) >= count, within_s)

    async def run(
        self,
        settings: MqttSettings,
        topics: list[str],
        *,
        reconnect: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe (QoS 1) and record until cancelled; with reconnect=True survive broker
        restarts (combine with clean_session=False and a persistent broker to miss nothing)."""
        started = False
        while True:
            try:
                async with open_mqtt_connection(settings, message_buffer=math.inf) as conn:
                    for topic in topics:
                        if not await conn.subscribe(topic, qos=1):
                            raise RuntimeError(f"subscription to {topic} refused")
                    self.connection = conn
                    self.connects += 1
                    if not started:
                        started = True
                        task_status.started()
                    self.changes.pulse()
                    async for message in conn.messages:
                        self.received.append(Received(trio.current_time(), message))
                        self.changes.pulse()
            except MqttError:
                if not reconnect:
                    raise
                await trio.sleep(0.02)
