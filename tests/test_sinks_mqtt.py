"""MqttConnection (paho-mqtt driven by Trio) against a real mosquitto."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from eebus_bridge.config import MqttTls
from eebus_bridge.sinks.mqtt import (
    MqttConnectError,
    MqttConnectionLost,
    MqttRefusedError,
    open_mqtt_connection,
)
from tests._broker import MosquittoBroker, Recorder, requires_mosquitto, running_mosquitto

pytestmark = requires_mosquitto


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with running_mosquitto(tmp_path) as broker:
        yield broker


@pytest.mark.parametrize("transport", ["tcp", "websockets", "unix"])
async def test_publish_reaches_a_subscriber_over_each_transport(
    broker: MosquittoBroker, transport: str
) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run, broker.settings(client_id="rec"), ["t/#"])
        async with open_mqtt_connection(
            broker.settings(transport, client_id="pub")  # type: ignore[arg-type]
        ) as conn:
            await conn.publish("t/qos1", b"one", qos=1)
            await conn.publish("t/qos0", "zero")
            await recorder.wait_for_count("t/qos0", 1)
        nursery.cancel_scope.cancel()
    assert recorder.payloads("t/qos1") == [b"one"]
    assert recorder.payloads("t/qos0") == [b"zero"]
    assert all(not item.message.retain for item in recorder.received)


async def test_subscriber_over_websockets_receives(broker: MosquittoBroker) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run, broker.settings("websockets", client_id="rec"), ["a/b"])
        async with open_mqtt_connection(broker.settings(client_id="pub")) as conn:
            for n in range(20):
                await conn.publish("a/b", str(n), qos=1)
        await recorder.wait_for_count("a/b", 20)
        nursery.cancel_scope.cancel()
    assert recorder.payloads("a/b") == [str(n).encode() for n in range(20)]


async def test_broker_down_is_a_connect_error(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path)
    await broker.start()
    settings = broker.settings()
    await broker.stop()
    with pytest.raises(
        MqttConnectError, match=r"cannot connect to MQTT broker mqtt://127\.0\.0\.1"
    ):
        async with open_mqtt_connection(settings):
            pytest.fail("connected to a stopped broker")
    broker.cleanup()


async def test_wrong_credentials_are_refused_clearly(tmp_path: Path) -> None:
    async with running_mosquitto(tmp_path, users={"bridge": "secret"}) as broker:
        with pytest.raises(MqttRefusedError, match="refused the connection: not authorized"):
            async with open_mqtt_connection(broker.settings(username="bridge", password="bad")):
                pytest.fail("connected with a wrong password")
        async with open_mqtt_connection(
            broker.settings(username="bridge", password="secret")
        ) as conn:
            await conn.publish("x", b"1", qos=1)


async def test_lost_connection_cancels_the_body_and_raises(broker: MosquittoBroker) -> None:
    reached_end_of_body = False

    async def publish_then_lose_the_broker() -> None:
        nonlocal reached_end_of_body
        async with open_mqtt_connection(broker.settings()) as conn:
            await conn.publish("x", b"1", qos=1)
            await broker.stop()
            await trio.sleep(10)
            reached_end_of_body = True

    with pytest.raises(MqttConnectionLost, match=r"MQTT broker .*: closed by the broker"):
        await publish_then_lose_the_broker()
    assert not reached_end_of_body


async def test_messages_beyond_the_buffer_are_dropped_not_queued(broker: MosquittoBroker) -> None:
    async with (
        open_mqtt_connection(broker.settings(client_id="sub"), message_buffer=2) as sub,
        open_mqtt_connection(broker.settings(client_id="pub")) as pub,
    ):
        assert await sub.subscribe("d", qos=0)
        for n in range(5):
            await pub.publish("d", str(n), qos=1)
        # Dropping is silent by design (nothing to wait on), so this one waits by polling.
        with trio.fail_after(5):
            while sub.dropped_messages < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
        first = await sub.messages.receive()
        second = await sub.messages.receive()
    assert (first.payload, second.payload) == (b"0", b"1")
    assert sub.dropped_messages == 3


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the certificates")
async def test_tls_with_the_broker_ca_and_refusal_without_it(tmp_path: Path) -> None:
    async with running_mosquitto(tmp_path, tls=True) as broker:
        trusted = broker.settings(tls=MqttTls(ca_file=broker.ca_file))
        assert trusted.port == broker.tls_port
        recorder = Recorder()
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run, broker.settings(client_id="rec"), ["tls/#"])
            async with open_mqtt_connection(trusted) as conn:
                await conn.publish("tls/x", b"secret", qos=1)
            await recorder.wait_for_count("tls/x", 1)
            nursery.cancel_scope.cancel()
        # verify = false accepts the unknown CA (for test benches only)
        async with open_mqtt_connection(broker.settings(tls=MqttTls(verify=False))) as conn:
            await conn.publish("tls/y", b"1", qos=1)
        # the system CAs do not know this broker's certificate
        with pytest.raises(MqttConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            async with open_mqtt_connection(broker.settings(tls=MqttTls())):
                pytest.fail("TLS accepted an unknown CA")


async def _accept_and_stay_silent(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A TCP server that accepts connections and never says anything."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        try:
            await trio.sleep_forever()
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hold, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def test_no_connack_is_a_connect_error(broker: MosquittoBroker) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_accept_and_stay_silent)
        settings = broker.settings(port=port, connect_timeout_s=0.3)
        with pytest.raises(MqttConnectError, match="sent no CONNACK in time"):
            async with open_mqtt_connection(settings):
                pytest.fail("connected without CONNACK")
        nursery.cancel_scope.cancel()


async def test_a_blocked_connect_is_cancelled_at_once_and_leaks_nothing(
    broker: MosquittoBroker,
) -> None:
    # paho's WebSocket upgrade blocks in the worker thread until the silent server's timeout;
    # cancelling must not wait for it, and the abandoned thread closes its socket itself.
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_accept_and_stay_silent)
        # The blocked upgrade would hold the caller for the whole 3 s connect time-out; the
        # cancel must end it long before that (1.5 s is generous for a loaded 2-core machine:
        # the earlier 0.3 s margin failed 1 run in 10 under load).
        settings = broker.settings("websockets", port=port, connect_timeout_s=3.0)
        started = trio.current_time()
        with trio.move_on_after(0.1) as attempt:
            async with open_mqtt_connection(settings):
                pytest.fail("connected to a silent server")
        assert attempt.cancelled_caught
        assert trio.current_time() - started < 1.5
        await trio.sleep(3.5)  # the thread gives up; -W error::ResourceWarning would flag a leak
        gc.collect()
        nursery.cancel_scope.cancel()
