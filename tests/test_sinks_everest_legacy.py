"""The everest-legacy-api sink against a real mosquitto: plain watt numbers, re-sent later."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from eebus_bridge.backoff import BackoffPolicy
from eebus_bridge.config import EverestLegacyApiOutput, LpcConfig
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.everest_legacy import EverestLegacyApiSink, format_watts
from tests._broker import LogWatcher, Recorder, requires_mosquitto, running_mosquitto
from tests._publications import failsafe, limited, limited_for, unlimited

pytestmark = requires_mosquitto

FAST = BackoffPolicy(initial_s=0.05, maximum_s=0.3, healthy_s=5.0)
LPC = LpcConfig(max_nominal_power_W=22000.0, failsafe_limit_W=4200.0)


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    with LogWatcher() as watcher:
        yield watcher


async def _run_forever(sink: EverestLegacyApiSink, latest: LatestValue[Publication]) -> None:
    await sink.run(latest)
    pytest.fail("the sink returned")


def test_format_watts_is_a_plain_number() -> None:
    assert format_watts(4200.0) == "4200"
    assert format_watts(4200.5) == "4200.5"
    assert format_watts(0.0) == "0"


async def test_topic_and_payload_numbers_for_each_state(tmp_path: Path) -> None:
    async with running_mosquitto(tmp_path) as broker:
        output = EverestLegacyApiOutput(
            evse_manager_id="evse_manager_1",
            port=broker.tcp_port,
            topic_prefix="pre/",
        )
        sink = EverestLegacyApiSink(output, LPC, backoff=FAST)
        topic = "pre/everest_api/evse_manager_1/cmd/set_limit_watts"
        assert sink.topic == topic
        assert sink.settings.client_id == "eebus-bridge-evse_manager_1"
        latest: LatestValue[Publication] = LatestValue()
        publications = [
            limited(4200.0),
            limited_for(3700.5, timedelta(minutes=5)),
            unlimited(),
            failsafe(4000.0),
        ]
        recorder = Recorder()
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run, broker.settings(client_id="rec"), ["#"])
            nursery.start_soon(_run_forever, sink, latest)
            for count, publication in enumerate(publications, start=1):
                latest.set(publication)
                await recorder.wait_for_count(topic, count)
            nursery.cancel_scope.cancel()
    # unlimited is sent as [lpc] max_nominal_power_W: the legacy API has no "clear"
    assert recorder.payloads(topic) == [b"4200", b"3700.5", b"22000", b"4000"]
    assert {item.message.topic for item in recorder.received} == {topic}
    assert not any(item.message.retain for item in recorder.received)


async def test_the_current_value_is_sent_again_after_a_broker_restart(
    tmp_path: Path, logs: LogWatcher
) -> None:
    async with running_mosquitto(tmp_path, persistence=True) as broker:
        output = EverestLegacyApiOutput(evse_manager_id="evse", port=broker.tcp_port)
        sink = EverestLegacyApiSink(output, LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(6000.0))
        recorder = Recorder()
        settings = broker.settings(client_id="rec", clean_session=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: recorder.run(
                    settings, [sink.topic], reconnect=True, task_status=task_status
                )
            )
            nursery.start_soon(_run_forever, sink, latest)
            await recorder.wait_for_count(sink.topic, 1)
            await broker.restart()
            await recorder.wait_for_count(sink.topic, 2)
            # Logged once the broker's PUBACK is in, which may come after the recorder's copy.
            await logs.wait_for(logging.INFO, "re-sent 6000 W for state Limited")
            nursery.cancel_scope.cancel()
    # (A third 6000 may follow: the restarted broker re-delivering a QoS 1 message whose
    # PUBACK from the recorder it had not stored yet.)
    assert recorder.payloads(sink.topic)[:2] == [b"6000", b"6000"]
    assert logs.matching(logging.INFO, "re-sent 6000 W for state Limited")
