"""The everest-api sink against a real mosquitto: topics, payloads, checks, heartbeats, recovery."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from eebus_bridge.backoff import BackoffPolicy
from eebus_bridge.config import EverestApiOutput
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.everest_api import EverestApiSink
from eebus_bridge.sinks.mqtt import MqttConnection, MqttMessage, open_mqtt_connection
from tests._broker import (
    LogWatcher,
    MosquittoBroker,
    Recorder,
    requires_mosquitto,
    running_mosquitto,
)
from tests._publications import (
    NOW_TEXT,
    SOURCE,
    failsafe,
    limited,
    limited_for,
    unlimited,
)

pytestmark = requires_mosquitto

MODULE_ID = "eebus_lpc_api"
BASE = f"everest_api/1/external_energy_limits_consumer/{MODULE_ID}"
LIMITS_TOPIC = f"{BASE}/m2e/set_external_limits"
CHECK_TOPIC = f"{BASE}/m2e/communication_check"
HEARTBEAT_TOPIC = f"{BASE}/e2m/heartbeat"
FAST = BackoffPolicy(initial_s=0.05, maximum_s=0.3, healthy_s=5.0)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with running_mosquitto(tmp_path) as broker:
        yield broker


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    with LogWatcher() as watcher:
        yield watcher


def output_on(broker: MosquittoBroker, transport: str = "tcp", **changes: Any) -> EverestApiOutput:
    settings = broker.settings(transport)  # type: ignore[arg-type]
    output = EverestApiOutput(
        module_id=MODULE_ID,
        host=settings.host,
        port=settings.port,
        transport=settings.transport,
        path=settings.unix_path,
    )
    return attrs.evolve(output, **changes)


async def _run_forever(sink: EverestApiSink, latest: LatestValue[Publication]) -> None:
    await sink.run(latest)
    pytest.fail("the sink returned")


async def _with_sink_and_recorder(
    broker: MosquittoBroker,
    sink: EverestApiSink,
    latest: LatestValue[Publication],
    body: Callable[[Recorder], Awaitable[None]],
    topics: list[str] | None = None,
) -> Recorder:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            recorder.run, broker.settings(client_id="recorder"), topics or ["everest_api/#"]
        )
        nursery.start_soon(_run_forever, sink, latest)
        await body(recorder)
        nursery.cancel_scope.cancel()
    return recorder


def limits_entry(at: str, value: float | None) -> dict[str, Any]:
    limits = {} if value is None else {"total_power_W": {"value": value, "source": SOURCE}}
    return {"timestamp": at, "limits_to_root": limits, "limits_to_leaves": limits}


@pytest.mark.parametrize("transport", ["tcp", "websockets", "unix"])
async def test_exact_topic_and_payload_for_each_state(
    broker: MosquittoBroker, transport: str
) -> None:
    sink = EverestApiSink(output_on(broker, transport), backoff=FAST)
    latest: LatestValue[Publication] = LatestValue()
    cases: list[tuple[Publication, dict[str, Any]]] = [
        (
            limited(4200.0),
            {
                "schedule_import": [limits_entry(NOW_TEXT, 4200.0)],
                "schedule_export": [],
                "schedule_setpoints": [],
            },
        ),
        (
            limited_for(3000.0, timedelta(minutes=15)),
            {
                "schedule_import": [
                    limits_entry(NOW_TEXT, 3000.0),
                    limits_entry("2026-05-07T10:15:00.123Z", None),
                ],
                "schedule_export": [],
                "schedule_setpoints": [],
            },
        ),
        (
            unlimited(),
            {
                "schedule_import": [limits_entry(NOW_TEXT, None)],
                "schedule_export": [],
                "schedule_setpoints": [],
            },
        ),
        (
            failsafe(4200.0),
            {
                "schedule_import": [limits_entry(NOW_TEXT, 4200.0)],
                "schedule_export": [],
                "schedule_setpoints": [],
            },
        ),
    ]

    async def publish_each(recorder: Recorder) -> None:
        for count, (publication, _) in enumerate(cases, start=1):
            latest.set(publication)
            await recorder.wait_for_count(LIMITS_TOPIC, count)

    recorder = await _with_sink_and_recorder(broker, sink, latest, publish_each)
    received = recorder.on(LIMITS_TOPIC)
    assert [json.loads(item.message.payload) for item in received] == [
        expected for _, expected in cases
    ]
    # The bare object, compact, never retained.
    assert received[0].message.payload == json.dumps(cases[0][1], separators=(",", ":")).encode()
    assert not any(item.message.retain for item in received)
    assert sink.name == f"everest-api[{MODULE_ID}]"


async def test_topic_prefix_is_concatenated_without_a_slash(broker: MosquittoBroker) -> None:
    sink = EverestApiSink(output_on(broker, topic_prefix="site7/"), backoff=FAST)
    latest: LatestValue[Publication] = LatestValue()
    latest.set(limited(1000.0))

    async def wait_for_limits(recorder: Recorder) -> None:
        await recorder.wait_for_count(f"site7/{LIMITS_TOPIC}", 1)

    recorder = await _with_sink_and_recorder(broker, sink, latest, wait_for_limits, ["#"])
    topics = {item.message.topic for item in recorder.received}
    assert f"site7/{LIMITS_TOPIC}" in topics
    assert all(topic.startswith("site7/everest_api/1/") for topic in topics)
    assert sink.settings.client_id == f"eebus-bridge-{MODULE_ID}"


async def test_communication_check_sends_true_at_the_configured_cadence(
    broker: MosquittoBroker,
) -> None:
    sink = EverestApiSink(output_on(broker, communication_check_s=0.1), backoff=FAST)
    latest: LatestValue[Publication] = LatestValue()

    async def observe(recorder: Recorder) -> None:
        await recorder.wait_for_count(CHECK_TOPIC, 1)
        first = recorder.on(CHECK_TOPIC)[0].at
        await trio.sleep_until(first + 1.0)
        window = [item for item in recorder.on(CHECK_TOPIC) if item.at < first + 1.0]
        # ten per second expected; the bounds only have to exclude "never" and "flooding"
        assert 4 <= len(window) <= 16

    recorder = await _with_sink_and_recorder(broker, sink, latest, observe)
    assert set(recorder.payloads(CHECK_TOPIC)) == {b"true"}
    assert recorder.on(LIMITS_TOPIC) == []  # nothing published before there is a limit


async def test_heartbeat_silence_is_a_warning_and_its_return_is_info(
    broker: MosquittoBroker, logs: LogWatcher
) -> None:
    sink = EverestApiSink(output_on(broker), backoff=FAST)
    latest: LatestValue[Publication] = LatestValue()

    async def send_heartbeats(conn: MqttConnection) -> None:
        for counter in itertools.count(1):
            await conn.publish(HEARTBEAT_TOPIC, str(counter))
            await trio.sleep(0.2)

    async def scenario(recorder: Recorder) -> None:
        await logs.wait_for(logging.INFO, "connected to MQTT broker")
        async with open_mqtt_connection(broker.settings(client_id="everest")) as everest:
            async with trio.open_nursery() as heartbeats:
                heartbeats.start_soon(send_heartbeats, everest)
                await logs.wait_for(logging.INFO, "EVerest heartbeat received")
                await trio.sleep(1.0)  # let the sink learn the 200 ms interval
                assert logs.matching(logging.WARNING, "no heartbeat") == []
                heartbeats.cancel_scope.cancel()
            warnings = await logs.wait_for(logging.WARNING, "no heartbeat from EVerest", within_s=3)
            assert HEARTBEAT_TOPIC in warnings[0]
            async with trio.open_nursery() as heartbeats:
                heartbeats.start_soon(send_heartbeats, everest)
                await logs.wait_for(logging.INFO, "EVerest heartbeat is back")
                heartbeats.cancel_scope.cancel()

    await _with_sink_and_recorder(broker, sink, latest, scenario)
    assert len(logs.matching(logging.WARNING, "no heartbeat from EVerest")) == 1


async def test_no_heartbeat_at_all_warns_after_three_default_intervals(
    broker: MosquittoBroker, logs: LogWatcher
) -> None:
    sink = EverestApiSink(output_on(broker), backoff=FAST, default_heartbeat_interval_s=0.1)
    latest: LatestValue[Publication] = LatestValue()

    async def scenario(recorder: Recorder) -> None:
        await logs.wait_for(logging.INFO, "connected to MQTT broker")
        connected_at = trio.current_time()
        await logs.wait_for(logging.WARNING, "no heartbeat from EVerest", within_s=3)
        assert trio.current_time() - connected_at >= 0.3

    await _with_sink_and_recorder(broker, sink, latest, scenario)


def _limit_value(message: MqttMessage) -> float:
    limits = json.loads(message.payload)["schedule_import"][0]["limits_to_root"]
    return float(limits["total_power_W"]["value"])


def _limit_values(recorder: Recorder) -> list[float]:
    return [_limit_value(item.message) for item in recorder.on(LIMITS_TOPIC)]


async def test_broker_restart_redelivers_the_current_limits(
    tmp_path: Path, logs: LogWatcher
) -> None:
    async with running_mosquitto(tmp_path, persistence=True) as broker:
        sink = EverestApiSink(output_on(broker), backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(4200.0))
        recorder = Recorder()
        # A persistent session: what the sink sends while the recorder reconnects is queued.
        recorder_settings = broker.settings(client_id="recorder", clean_session=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: recorder.run(
                    recorder_settings, [LIMITS_TOPIC], reconnect=True, task_status=task_status
                )
            )
            nursery.start_soon(_run_forever, sink, latest)
            await recorder.wait_for_count(LIMITS_TOPIC, 1)

            await broker.stop()
            await logs.wait_for(logging.WARNING, "lost the connection to MQTT broker")
            latest.set(limited(2000.0))  # decided while the broker is away
            await trio.sleep(0.3)  # a few failed attempts
            await broker.start()
            back_at = trio.current_time()
            await recorder.changes.wait_until(lambda: 2000.0 in _limit_values(recorder), 5)
            arrived = next(r for r in recorder.on(LIMITS_TOPIC) if _limit_value(r.message) == 2000)
            assert arrived.at - back_at < 2.0
            # The sink logs a publication once the broker's PUBACK is in, which can come after
            # the recorder already got the message: wait for it before stopping the sink.
            await logs.wait_for(logging.INFO, "limits for state Limited (2000 W)")
            nursery.cancel_scope.cancel()
    # The broker itself may hand the recorder 4200 W once more after its restart: a QoS 1
    # delivery whose PUBACK it had not stored yet when stopped. Such a repeat is not the sink's.
    values = [value for value, _repeats in itertools.groupby(_limit_values(recorder))]
    assert values == [4200.0, 2000.0]  # the current limit, not the stale one
    # 2000 W was decided while the broker was away: published for the first time on return
    assert logs.matching(logging.INFO, "published limits for state Limited (2000 W)")
    assert not logs.matching(logging.INFO, "re-published")


async def test_broker_down_at_start_is_retried_until_it_comes(
    tmp_path: Path, logs: LogWatcher
) -> None:
    broker = MosquittoBroker(workdir=tmp_path, persistence=True)
    await broker.start()
    recorder = Recorder()
    recorder_settings = broker.settings(client_id="recorder", clean_session=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: recorder.run(
                    recorder_settings, [LIMITS_TOPIC], reconnect=True, task_status=task_status
                )
            )
            await broker.stop()
            sink = EverestApiSink(output_on(broker), backoff=FAST)
            latest: LatestValue[Publication] = LatestValue()
            latest.set(failsafe(4200.0, state="Init"))
            nursery.start_soon(_run_forever, sink, latest)
            failures = await logs.wait_for(logging.WARNING, "cannot connect to MQTT broker", 2)
            assert "retrying in" in failures[0]
            await broker.start()
            await recorder.wait_for_count(LIMITS_TOPIC, 1)
            nursery.cancel_scope.cancel()
    finally:
        await broker.stop()
        broker.cleanup()
    assert json.loads(recorder.payloads(LIMITS_TOPIC)[0])["schedule_import"][0][
        "limits_to_root"
    ] == {"total_power_W": {"value": 4200.0, "source": SOURCE}}


async def test_wrong_credentials_are_logged_retried_and_recover(
    tmp_path: Path, logs: LogWatcher
) -> None:
    users = {"recorder": "rec", "bridge": "right"}
    async with running_mosquitto(tmp_path, users, persistence=True) as broker:
        recorder = Recorder()
        recorder_settings = broker.settings(
            client_id="recorder", clean_session=False, username="recorder", password="rec"
        )
        sink = EverestApiSink(output_on(broker, username="bridge", password="wrong"), backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(1500.0))
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: recorder.run(
                    recorder_settings, [LIMITS_TOPIC], reconnect=True, task_status=task_status
                )
            )
            nursery.start_soon(_run_forever, sink, latest)
            refusals = await logs.wait_for(
                logging.ERROR, "refused the connection: not authorized", count=2
            )
            assert "retrying in" in refusals[0]
            assert recorder.on(LIMITS_TOPIC) == []
            # The operator fixes the broker's password file; the bridge recovers by itself.
            broker.users = {"recorder": "rec", "bridge": "wrong"}
            await broker.restart()
            await recorder.wait_for_count(LIMITS_TOPIC, 1, within_s=5)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "bad_limits",
    [
        pytest.param({"total_power_W": {"value": -1.0, "source": SOURCE}}, id="negative"),
        pytest.param(
            {"total_power_W": {"value": 1.0, "source": SOURCE}, "max_W": 1.0}, id="extra-key"
        ),
        pytest.param({"total_power_W": {"value": float("nan"), "source": SOURCE}}, id="nan"),
    ],
)
async def test_an_invalid_payload_is_logged_and_not_sent(
    broker: MosquittoBroker, logs: LogWatcher, bad_limits: dict[str, Any]
) -> None:
    sink = EverestApiSink(output_on(broker), backoff=FAST)
    latest: LatestValue[Publication] = LatestValue()
    bad = attrs.evolve(
        limited(1.0),
        external_limits={
            "schedule_import": [
                {"timestamp": NOW_TEXT, "limits_to_root": bad_limits, "limits_to_leaves": {}}
            ],
            "schedule_export": [],
            "schedule_setpoints": [],
        },
    )

    async def scenario(recorder: Recorder) -> None:
        await logs.wait_for(logging.INFO, "connected to MQTT broker")
        latest.set(bad)
        errors = await logs.wait_for(logging.ERROR, "NOT sending invalid ExternalLimits")
        assert "limits_to_root" in errors[0]
        latest.set(limited(4200.0))
        await recorder.wait_for_count(LIMITS_TOPIC, 1)

    recorder = await _with_sink_and_recorder(broker, sink, latest, scenario)
    # In-order delivery: had the bad payload been sent, it would have arrived first.
    assert len(recorder.on(LIMITS_TOPIC)) == 1
    assert b"4200" in recorder.payloads(LIMITS_TOPIC)[0]
