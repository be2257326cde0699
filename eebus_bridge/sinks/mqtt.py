"""A small MQTT client connection driven by Trio, built on paho-mqtt's external-loop API.

No MQTT library is Trio-native, and the protocol is not something to hand-write (stack-notes).
paho-mqtt can be driven by a foreign event loop: it gives us its socket, we call `loop_read()`
when the socket is readable, `loop_write()` when it is writable and paho has data queued
(it tells us through `on_socket_register_write`), and `loop_misc()` now and then for its
keepalive housekeeping. All of that runs in the Trio thread, so paho's callbacks run there too
and may touch Trio objects directly.

The one blocking step is opening the socket: DNS, TCP connect, TLS handshake and the WebSocket
upgrade all happen inside paho's `reconnect()`. It runs in a worker thread
(`trio.to_thread.run_sync(abandon_on_cancel=True)`), bounded by paho's connect timeout, and
the Trio side touches the client only after the thread returned. A cancelled attempt abandons
the thread; whichever side finishes last closes the socket, so nothing leaks.

Each connection uses a fresh paho client, by default with a clean session: nothing queued for
an old connection is replayed on a new one (a sink re-sends its *current* value instead, never
a stale one). A connection counts as up only after a successful CONNACK; a refusal (bad
credentials, unknown client) is its own error type so callers can say so clearly.

Inside `open_mqtt_connection()` a lost connection looks like cancellation of the body; the
context manager then raises `MqttConnectionLost`. Callers therefore only ever catch `MqttError`
around the `async with`, never inside it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import attrs
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff
from eebus_bridge.config import EverestApiOutput, EverestLegacyApiOutput, MqttTls

logger = logging.getLogger(__name__)

_MESSAGE_BUFFER = 64


@attrs.frozen
class MqttSettings:
    """Where and how to connect; built from an output's config by `mqtt_settings_for()`."""

    host: str = "127.0.0.1"
    port: int = 1883
    transport: Literal["tcp", "websockets", "unix"] = "tcp"
    unix_path: Path | None = None
    ws_path: str = "/mqtt"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    # The sinks always start clean (nothing stale replayed); a persistent session is for
    # subscribers that must not miss messages sent while they were away (tests use it).
    clean_session: bool = True

    def describe(self) -> str:
        """The broker address for log lines, e.g. mqtt://127.0.0.1:1883 or unix:/run/mq.sock."""
        if self.transport == "unix":
            return f"unix:{self.unix_path}"
        secure = "s" if self.tls is not None else ""
        if self.transport == "websockets":
            return f"ws{secure}://{self.host}:{self.port}{self.ws_path}"
        return f"mqtt{secure}://{self.host}:{self.port}"


def mqtt_settings_for(
    output: EverestApiOutput | EverestLegacyApiOutput, default_client_id: str
) -> MqttSettings:
    """The connection settings of an MQTT output section ("" client_id = the default)."""
    if output.transport == "unix" and output.path is None:
        raise ValueError("MQTT transport 'unix' needs a socket path")
    return MqttSettings(
        host=output.host,
        port=output.port,
        transport=output.transport,
        unix_path=output.path,
        ws_path=output.ws_path,
        client_id=output.client_id or default_client_id,
        username=output.username,
        password=output.password,
        tls=output.tls,
    )


def check_topic_name(topic: str) -> str:
    """The topic, if it is usable for publishing (no wildcards, no NUL); else ValueError.

    Checked when a sink is built, so a bad module id fails at start-up instead of in a
    publish deep inside a connection.
    """
    if not topic or any(char in topic for char in "+#\0"):
        raise ValueError(f"not a valid MQTT topic name: {topic!r}")
    return topic


class MqttError(Exception):
    """Any network-level MQTT trouble; a sink logs it and reconnects with backoff."""


class MqttConnectError(MqttError):
    """The connection could not be established (network, TLS, WebSocket, no CONNACK)."""


class MqttRefusedError(MqttConnectError):
    """The broker answered CONNACK with a refusal, e.g. bad credentials."""


class MqttConnectionLost(MqttError):
    """An established connection ended."""


@attrs.frozen
class MqttMessage:
    topic: str
    payload: bytes
    retain: bool


def _make_client(settings: MqttSettings) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        clean_session=settings.clean_session,
        protocol=MQTTProtocolVersion.MQTTv311,
        transport=settings.transport,
        reconnect_on_failure=False,
    )
    client.connect_timeout = settings.connect_timeout_s
    if settings.transport == "websockets":
        client.ws_set_options(path=settings.ws_path)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    tls = settings.tls
    if tls is not None:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file is not None else None,
            certfile=str(tls.cert_file) if tls.cert_file is not None else None,
            keyfile=str(tls.key_file) if tls.key_file is not None else None,
            cert_reqs=ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
        )
        if not tls.verify:
            client.tls_insecure_set(True)
    host = str(settings.unix_path) if settings.transport == "unix" else settings.host
    # For "unix" paho takes the socket path as host; the port is unused but must be positive.
    client.connect_async(host, settings.port if settings.port > 0 else 1883, settings.keepalive_s)
    return client


def _close_socket_of(client: paho.Client) -> None:
    sock = client.socket()
    if sock is not None:
        sock.close()


def _close_sockets_left_in(exc: BaseException) -> None:
    """Close the sockets a failed connect attempt left behind.

    When a TLS or WebSocket handshake fails, paho drops the socket it was setting up without
    closing it; only the frames of the failing calls still reference it. The garbage collector
    would close it too, but with a ResourceWarning and only when the traceback is gone.
    """
    frame_traceback = exc.__traceback__
    while frame_traceback is not None:
        for value in frame_traceback.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        frame_traceback = frame_traceback.tb_next


class _ThreadedOpen:
    """Runs paho's blocking socket setup in a worker thread that may be abandoned."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._finished = False
        self._abandoned = False

    def run_in_thread(self) -> MQTTErrorCode:
        try:
            return self._client.reconnect()
        except BaseException as exc:
            _close_sockets_left_in(exc)
            raise
        finally:
            with self._lock:
                self._finished = True
                abandoned = self._abandoned
            if abandoned:
                _close_socket_of(self._client)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            finished = self._finished
        if finished:
            _close_socket_of(self._client)


async def _open_socket(client: paho.Client, settings: MqttSettings) -> None:
    opener = _ThreadedOpen(client)
    try:
        rc = await trio.to_thread.run_sync(opener.run_in_thread, abandon_on_cancel=True)
    except trio.Cancelled:
        opener.abandon()
        raise
    except (OSError, ValueError) as exc:
        # OSError covers refused/unreachable, DNS failures, timeouts, TLS (ssl.SSLError) and
        # WebSocket handshake failures (paho's WebsocketConnectionError is a ConnectionError).
        _close_socket_of(client)
        raise MqttConnectError(
            f"cannot connect to MQTT broker {settings.describe()}: {_describe_os_error(exc)}"
        ) from exc
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
        _close_socket_of(client)
        raise MqttConnectError(
            f"cannot connect to MQTT broker {settings.describe()}: {paho.error_string(rc)}"
        )


def _describe_os_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.strerror not in text:
        text = f"{text} ({exc.strerror})"
    return text


class MqttConnection:
    """An open MQTT connection whose CONNACK said yes; get one from `open_mqtt_connection()`.

    Messages of subscribed topics arrive on `messages` (a bounded channel: when nobody reads
    it, the newest messages are dropped and counted rather than piling up).
    """

    def __init__(self, client: paho.Client, settings: MqttSettings, message_buffer: float) -> None:
        self._client = client
        self._settings = settings
        sock = client.socket()
        if sock is None:
            raise MqttConnectError("paho returned without a socket")
        self._sock: Any = sock
        self._send_messages, self.messages = trio.open_memory_channel[MqttMessage](message_buffer)
        self.dropped_messages = 0
        self._write_wanted = trio.Event()
        self._connack = trio.Event()
        self._connack_reason: ReasonCode | None = None
        self._acks: dict[int, trio.Event] = {}
        self._suback_codes: dict[int, list[ReasonCode]] = {}
        self._lost_reason: str | None = None
        self._body_scope = trio.CancelScope()
        self._drive_scope = trio.CancelScope()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write

    @property
    def settings(self) -> MqttSettings:
        return self._settings

    # -- public operations -------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: Literal[0, 1] = 0, retain: bool = False
    ) -> None:
        """Send one message; with qos=1, return once the broker acknowledged it (PUBACK)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lose(f"publish failed: {paho.error_string(info.rc)}")
        if qos == 0:
            await trio.lowlevel.checkpoint()
            return
        acked = self._acks.setdefault(info.mid, trio.Event())
        try:
            await acked.wait()
        finally:
            self._acks.pop(info.mid, None)

    async def subscribe(self, topic: str, *, qos: Literal[0, 1] = 0) -> bool:
        """Subscribe and wait for SUBACK; False when the broker refused the subscription."""
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self._lose(f"subscribe failed: {paho.error_string(rc)}")
            await trio.lowlevel.checkpoint()
            return False
        acked = self._acks.setdefault(mid, trio.Event())
        try:
            await acked.wait()
        finally:
            self._acks.pop(mid, None)
        codes = self._suback_codes.pop(mid, [])
        return bool(codes) and not any(code.is_failure for code in codes)

    # -- paho callbacks (run synchronously inside loop_read/loop_write, in the Trio thread) -

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._connack_reason = reason_code
        self._connack.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        # Every other way a connection ends also shows up as an error code of our own loop
        # calls or a closed socket, which _check and the I/O loops report more precisely.
        if flags.is_disconnect_packet_from_server:
            self._lose(f"the broker disconnected us ({str(reason_code).lower()})")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        item = MqttMessage(
            topic=message.topic, payload=bytes(message.payload), retain=message.retain
        )
        try:
            self._send_messages.send_nowait(item)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped_messages += 1

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        acked = self._acks.get(mid)
        if acked is not None:
            acked.set()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        self._suback_codes[mid] = list(reason_codes)
        acked = self._acks.setdefault(mid, trio.Event())
        acked.set()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Wakes a task parked in wait_readable/wait_writable on this socket (Trio requires
        # notify_closing before a waited-on socket is closed).
        trio.lowlevel.notify_closing(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._write_wanted.set()

    # -- the drive loop ------------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
        self._body_scope.cancel()
        self._drive_scope.cancel()

    def _check(self, rc: MQTTErrorCode, lost_means: str) -> bool:
        """True while the connection is fine; else record why it ended and stop everything."""
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._client.socket() is self._sock:
            return True
        if rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_CONN_LOST):
            self._lose(lost_means)
        else:
            self._lose(paho.error_string(rc).rstrip(".").lower())
        return False

    async def _drive(self) -> None:
        with self._drive_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._keepalive_loop)

    async def _read_loop(self) -> None:
        sock = self._sock
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                self._lose("socket closed")
                return
            if not self._check(self._client.loop_read(), "closed by the broker"):
                return
            # TLS may hold decrypted bytes that the kernel no longer reports as readable.
            while getattr(sock, "pending", lambda: 0)() > 0:
                if not self._check(self._client.loop_read(), "closed by the broker"):
                    return

    async def _write_loop(self) -> None:
        sock = self._sock
        while True:
            self._write_wanted = trio.Event()
            if not self._client.want_write():
                await self._write_wanted.wait()
                continue
            try:
                await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, OSError):
                self._lose("socket closed")
                return
            if not self._check(self._client.loop_write(), "closed by the broker"):
                return

    async def _keepalive_loop(self) -> None:
        # paho's keepalive housekeeping (PINGREQ when idle, drop on a missing PINGRESP) needs
        # loop_misc() now and then; a quarter of the keepalive keeps it punctual enough.
        interval = max(0.5, self._settings.keepalive_s / 4)
        while True:
            await trio.sleep(interval)
            if not self._check(self._client.loop_misc(), "no answer to keepalive ping"):
                return

    async def _await_connack(self) -> MqttError | None:
        with trio.move_on_after(self._settings.connect_timeout_s):
            with self._body_scope:
                await self._connack.wait()
        reason = self._connack_reason
        where = self._settings.describe()
        if reason is not None and reason.is_failure:
            return MqttRefusedError(
                f"MQTT broker {where} refused the connection: {str(reason).lower()}"
            )
        if reason is not None and self._lost_reason is None:
            self._body_scope = trio.CancelScope()
            return None
        if self._lost_reason is not None:
            return MqttConnectError(
                f"MQTT broker {where} closed the connection before CONNACK ({self._lost_reason})"
            )
        return MqttConnectError(f"MQTT broker {where} sent no CONNACK in time")

    def _close(self) -> None:
        client = self._client
        client.on_socket_close = None
        client.on_socket_register_write = None
        client.on_disconnect = None
        client.on_message = None
        self._send_messages.close()
        if client.socket() is not None and self._lost_reason is None:
            # With no write callback registered paho writes DISCONNECT at once (non-blocking)
            # and closes the socket after it.
            client.disconnect()
        _close_socket_of(client)


@asynccontextmanager
async def open_mqtt_connection(
    settings: MqttSettings, *, message_buffer: float = _MESSAGE_BUFFER
) -> AsyncIterator[MqttConnection]:
    """Connect, wait for CONNACK, yield the connection; close it (DISCONNECT) on exit.

    Raises MqttConnectError/MqttRefusedError when no connection came up and MqttConnectionLost
    when it ended while the body ran (the body sees that as cancellation).
    """
    try:
        client = _make_client(settings)
    except (OSError, ValueError) as exc:
        # e.g. an unreadable CA or key file: reported like any connect failure and retried,
        # since the file may appear (or be fixed) while the bridge keeps running.
        raise MqttConnectError(
            f"cannot set up MQTT client for {settings.describe()}: {_describe_os_error(exc)}"
        ) from exc
    await _open_socket(client, settings)
    conn = MqttConnection(client, settings, message_buffer)
    failure: MqttError | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._drive)
            failure = await conn._await_connack()
            if failure is None:
                with conn._body_scope:
                    yield conn
            nursery.cancel_scope.cancel()
    finally:
        conn._close()
    if failure is not None:
        raise failure
    if conn._body_scope.cancelled_caught:
        raise MqttConnectionLost(
            f"lost the connection to MQTT broker {settings.describe()}: {conn._lost_reason}"
        )


async def keep_mqtt_connected(
    name: str,
    settings: MqttSettings,
    serve: Callable[[MqttConnection], Awaitable[None]],
    backoff: Backoff,
    activity: ActivityFeed,
) -> NoReturn:
    """Run `serve` on a connection, forever: reconnect with backoff whenever it fails or ends.

    `serve` runs until the connection is lost (it sees that as cancellation). Only
    cancellation of the caller ends this; MQTT trouble is logged, never raised.
    """
    while True:
        try:
            async with open_mqtt_connection(settings) as conn:
                backoff.connected()
                logger.info(
                    "%s: connected to MQTT broker %s as %r",
                    name,
                    settings.describe(),
                    settings.client_id,
                )
                activity.record("sink", sink=name, event="connected")
                await serve(conn)
                await trio.sleep_forever()
        except MqttRefusedError as exc:
            # Not a network hiccup: it needs someone to fix the credentials. Still retried, so
            # the bridge recovers by itself once the broker's password file is corrected.
            delay = backoff.next_delay()
            logger.error("%s: %s; retrying in %.1f s", name, exc, delay)
            activity.record("sink", sink=name, event="disconnected", reason=str(exc))
        except MqttError as exc:
            delay = backoff.next_delay()
            logger.warning("%s: %s; retrying in %.1f s", name, exc, delay)
            activity.record("sink", sink=name, event="disconnected", reason=str(exc))
        await trio.sleep(delay)
