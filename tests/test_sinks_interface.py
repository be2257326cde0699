"""make_sink and the shared reconnect backoff."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import (
    EverestApiOutput,
    EverestLegacyApiOutput,
    JsonlOutput,
    LpcConfig,
    RpcApiOutput,
)
from eebus_bridge.sinks import (
    EverestApiSink,
    EverestLegacyApiSink,
    JsonlSink,
    RpcApiSink,
    Sink,
    make_sink,
)


def test_make_sink_builds_the_sink_of_each_output_type(tmp_path: Path) -> None:
    lpc = LpcConfig(max_nominal_power_W=11000.0)
    sinks: list[Sink] = [
        make_sink(JsonlOutput(path=tmp_path / "x.jsonl"), lpc),
        make_sink(EverestApiOutput(module_id="lpc_api"), lpc),
        make_sink(EverestLegacyApiOutput(evse_manager_id="evse_manager"), lpc),
        make_sink(RpcApiOutput(url="ws://127.0.0.1:8080"), lpc),
    ]
    assert [type(sink) for sink in sinks] == [
        JsonlSink,
        EverestApiSink,
        EverestLegacyApiSink,
        RpcApiSink,
    ]
    assert [sink.name for sink in sinks] == [
        f"jsonl[{tmp_path / 'x.jsonl'}]",
        "everest-api[lpc_api]",
        "everest-legacy-api[evse_manager]",
        "rpcapi[ws://127.0.0.1:8080]",
    ]
    assert isinstance(sinks[3], RpcApiSink)
    assert sinks[3].unlimited_W == 11000.0  # default: [lpc] max_nominal_power_W


def test_everest_api_client_id_and_unix_transport() -> None:
    sink = EverestApiSink(EverestApiOutput(module_id="m", client_id="custom"))
    assert sink.settings.client_id == "custom"
    with pytest.raises(ValueError, match="socket path"):
        EverestApiSink(EverestApiOutput(module_id="m", transport="unix"))
    with pytest.raises(ValueError, match="not a valid MQTT topic"):
        EverestApiSink(EverestApiOutput(module_id="lpc/#"))
    with pytest.raises(ValueError, match="not a valid MQTT topic"):
        EverestLegacyApiSink(EverestLegacyApiOutput(evse_manager_id="+"), LpcConfig())


def test_rpcapi_rejects_a_non_websocket_url() -> None:
    with pytest.raises(ValueError, match="ws://"):
        RpcApiSink(RpcApiOutput(url="http://127.0.0.1:8080"), LpcConfig())


async def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(BackoffPolicy(initial_s=0.5, maximum_s=4.0, healthy_s=30.0, jitter=0.0))
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.connected()
    await trio.sleep(10)  # a short-lived connection does not reset the delay
    assert backoff.next_delay() == 4.0
    backoff.connected()
    await trio.sleep(30)
    assert backoff.next_delay() == 0.5
    assert backoff.next_delay() == 1.0
    backoff.reset()
    assert backoff.next_delay() == 0.5


async def test_backoff_jitter_stays_within_its_band(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(BackoffPolicy(initial_s=1.0, maximum_s=1.0, jitter=0.2))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.8 <= delay <= 1.2 for delay in delays)
    assert len(set(delays)) > 1
