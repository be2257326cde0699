"""Live control (JSON lines over TCP), scenarios and presets of the HEMS simulator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio
import trio_asyncio

from eebus_bridge.generated.control_service import ControlServiceStub
from eebus_bridge.generated.cs_lpc import ApproveOrDenyConsumptionLimitRequest
from eebus_bridge.island import open_island
from tests._sim_fixtures import aio, hems_sim, lpc_handshake, open_grpc_channel, valid_config
from tools.hems_simulator import (
    ActionSpec,
    ControlClient,
    HemsSimulator,
    ScenarioError,
    load_scenario,
    open_hems_simulator,
    preset_names,
    with_overrides,
)
from tools.hems_simulator.scenario import parse_scenario

__all__ = ["hems_sim"]


async def test_control_interface_drives_the_eg(hems_sim: HemsSimulator) -> None:
    assert hems_sim.control_port is not None
    client = ControlClient(hems_sim.control_port)
    not_yet = await client.request("send_limit", value=100)
    assert not_yet == {"ok": False, "error": "the EG is not connected"}
    async with open_grpc_channel(hems_sim.port) as channel:
        control = ControlServiceStub(channel)
        async with lpc_handshake(control) as lpc:
            await aio(control.start_service)()
            assert (await client.call("reconnect"))["ok"]  # no need to wait the connect delay
            answer = await client.call("send_limit", value=1500, active=True, duration_s=60)
            counter = answer["msg_counter"]
            status = await client.call("status")
            assert status["state"] == "Running"
            assert status["eg"]["connected"] is True
            assert status["lpc"]["pending"][str(counter)]["value"] == 1500
            await aio(lpc.approve_or_deny_consumption_limit)(
                ApproveOrDenyConsumptionLimitRequest(counter, True, "")
            )
            await hems_sim.wait_for_event("DataUpdateLimit")
            status = await client.call("status")
            assert status["lpc"]["limit"]["value"] == 1500
            assert status["lpc"]["limit"]["duration_nanoseconds"] == 60 * 10**9
            await client.call("write_failsafe_limit", value=4200)
            await client.call("write_failsafe_duration", duration_s=7200)
            status = await client.call("status")
            assert (status["lpc"]["failsafe_limit"], status["lpc"]["failsafe_duration_s"]) == (
                4200,
                7200,
            )
            await client.call("stop_heartbeat")
            assert (await client.call("status"))["eg"]["heartbeat"] is False
            await client.call("start_heartbeat")
            await client.call("send_heartbeat")
            await client.call("set_ski", ski="AA" * 20)
            assert hems_sim.eg_ski == "aa" * 20
            await client.call("disconnect")
            assert not hems_sim.eg_connected
            await client.call("freeze")
            assert hems_sim.frozen
            await client.call("unfreeze")
            assert not hems_sim.frozen


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "expected a JSON object"),
        (b'{"action": "explode"}\n', "unknown action 'explode'"),
        (b'{"action": "send_limit", "value": 1, "colour": "red"}\n', "unknown parameter(s) colour"),
        (b'{"action": "send_limit"}\n', "value is required"),
        (b'{"action": "send_limit", "value": "high"}\n', "value must be a number"),
        (b'{"action": "send_limit", "value": 1, "active": "yes"}\n', "active must be true"),
        (b'{"action": "set_ski", "ski": "nope"}\n', "is not an SKI"),
    ],
)
async def test_control_interface_errors(hems_sim: HemsSimulator, line: bytes, error: str) -> None:
    assert hems_sim.control_port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", hems_sim.control_port)
    async with stream:
        await stream.send_all(line)
        received = b""
        with trio.fail_after(5):
            while not received.endswith(b"\n"):
                received += await stream.receive_some(4096)
    answer = json.loads(received)
    assert answer["ok"] is False
    assert error in answer["error"]


async def test_several_requests_on_one_connection(hems_sim: HemsSimulator) -> None:
    assert hems_sim.control_port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", hems_sim.control_port)
    async with stream:
        await stream.send_all(b'{"action": "status"}\n\n{"action": "freeze"}\n')
        received = b""
        with trio.fail_after(5):
            while received.count(b"\n") < 2:
                received += await stream.receive_some(4096)
    answers = [json.loads(line) for line in received.splitlines()]
    assert [answer["ok"] for answer in answers] == [True, True]
    assert answers[0]["state"] == "Setup"
    assert hems_sim.frozen


def test_presets() -> None:
    assert {"controlbox", "dummy-cem", "manual"} <= set(preset_names())
    controlbox = load_scenario("controlbox")
    assert controlbox.eg.heartbeat_period_s == 60
    (write,) = controlbox.actions
    assert (write.action, write.at_s, write.value, write.active, write.duration_s) == (
        "send_limit",
        5.0,
        100.0,
        True,
        3723.0,
    )
    dummy = load_scenario("dummy-cem")
    assert dummy.eg.heartbeat_period_s == 4
    (repeat,) = dummy.actions
    assert (repeat.every_s, repeat.value_min, repeat.value_max, repeat.duration_s) == (
        5.0,
        100.0,
        3000.0,
        5.0,
    )
    for name in preset_names():
        load_scenario(name)


def test_scenario_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'time_scale = 0.5\n[eg]\nski = "AB:CD:' + "ab" * 18 + '"\nconnect_delay_s = 2\n'
        '[[actions]]\nat_s = 1\naction = "write_failsafe_duration"\nduration_s = 3600\n'
    )
    scenario = load_scenario(path)
    assert scenario.name == "mine"
    assert scenario.eg.ski == "abcd" + "ab" * 18
    assert scenario.scaled(scenario.eg.connect_delay_s) == 1.0
    changed = with_overrides(
        scenario, time_scale=0.1, connect_delay_s=0, approval_timeout_s=0.5, discovery=False
    )
    assert (changed.time_scale, changed.eg.connect_delay_s) == (0.1, 0)
    assert (changed.sidecar.approval_timeout_s, changed.sidecar.discovery) == (0.5, False)
    assert changed.actions == scenario.actions


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"colour": 1}, "unknown key(s): colour"),
        ({"eg": {"ski": "123"}}, "eg.ski"),
        ({"eg": {"heartbeat_period_s": 0}}, "eg.heartbeat_period_s: expected a number > 0"),
        ({"eg": {"requires_trust": "yes"}}, "eg.requires_trust: expected true or false"),
        ({"sidecar": {"approval_timeout_s": "10"}}, "sidecar.approval_timeout_s"),
        ({"actions": [{"at_s": 1, "action": "dance"}]}, "actions[0].action"),
        ({"actions": [{"at_s": 1, "action": "send_limit"}]}, "needs value"),
        (
            {"actions": [{"action": "send_limit", "value_min": 5, "value_max": 1}]},
            "value_min is above value_max",
        ),
        ({"actions": [{"action": "set_ski", "ski": "x"}]}, "set_ski needs ski"),
        ({"actions": [{"action": "reconnect", "count": 0}]}, "actions[0].count"),
        ({"actions": [{"action": "reconnect", "when": 3}]}, "actions[0].when"),
    ],
)
def test_scenario_errors_name_the_key(data: dict[str, object], error: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(error)):
        parse_scenario(data)


def test_unknown_preset() -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        load_scenario("nope")


async def test_repeated_actions_with_count_and_time_scale(autojump_clock: object) -> None:
    actions = (ActionSpec(action="send_heartbeat", at_s=10, every_s=10, count=3),)
    async with (
        open_hems_simulator(
            "manual", actions=actions, time_scale=0.5, heartbeat_period_s=10_000, connect_delay_s=2
        ) as sim,
        open_grpc_channel(sim.port) as channel,
    ):
        control = ControlServiceStub(channel)
        async with lpc_handshake(control):
            await aio(control.start_service)()
            started = trio.current_time()
            await trio.sleep(60)
    beats = [e.t - started for e in sim.events if e.name == "DataUpdateHeartbeat"]
    assert beats == pytest.approx([6.0, 11.0, 16.0])  # 1 s connect delay, then every 5 s


async def test_runs_on_the_callers_trio_asyncio_loop() -> None:
    async with open_island() as loop, open_hems_simulator() as sim:
        assert trio_asyncio.current_loop.get() is loop
        async with open_grpc_channel(sim.port) as channel:
            await aio(ControlServiceStub(channel).set_config)(valid_config())
        assert sim.records[0].ok
