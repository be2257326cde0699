"""End to end: simulator (controlbox preset) -> bridge -> real mosquitto -> EVerest's topics.

A subscriber in EVerest's place sees the 100 W limit the control box writes, with the second
(empty) schedule entry 3723 s later, on the API module's set_external_limits topic.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import trio

from eebus_bridge.island import open_island
from tests._bridge_fixtures import make_config, running_bridge
from tests._broker import Recorder, requires_mosquitto, running_mosquitto
from tools.hems_simulator import open_hems_simulator

pytestmark = requires_mosquitto

TOPIC = "everest_api/1/external_energy_limits_consumer/eebus_lpc_api/m2e/set_external_limits"
CHECK = "everest_api/1/external_energy_limits_consumer/eebus_lpc_api/m2e/communication_check"


def _time(stamp: str) -> datetime:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp[:-1] + "+00:00")


async def test_controlbox_limit_reaches_everest_over_mqtt(tmp_path: Path) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    async with (
        running_mosquitto(broker_dir) as broker,
        open_island(),
        open_hems_simulator("controlbox", connect_delay_s=0.1, time_scale=0.05) as sim,
        trio.open_nursery() as nursery,
    ):
        recorder = Recorder()
        await nursery.start(recorder.run, broker.settings("tcp"), [TOPIC, CHECK])
        config = make_config(
            tmp_path,
            grpc_port=sim.port,
            timing={"init_timeout_s": 30.0},
            extra_outputs=f"""
                [[output]]
                type = "everest-api"
                module_id = "eebus_lpc_api"
                host = "127.0.0.1"
                port = {broker.tcp_port}
                communication_check_s = 0.5
            """,
        )
        async with running_bridge(config) as (_bridge, publications):
            await publications.wait_state("Limited")
            await recorder.wait_for_count(TOPIC, 2, within_s=10)
            first, limited = (json.loads(p) for p in recorder.payloads(TOPIC)[:2])
            await recorder.wait_for_count(CHECK, 1, within_s=5)
            assert recorder.payloads(CHECK)[0] == b"true"
        nursery.cancel_scope.cancel()

    # Init: the failsafe limit, no end.
    assert first["schedule_import"][0]["limits_to_root"]["total_power_W"]["value"] == 4200.0
    assert len(first["schedule_import"]) == 1
    # Limited: 100 W now, and an empty entry 3723 s (+-1 s: the sidecar rounds) later.
    entries = limited["schedule_import"]
    assert len(entries) == 2
    power = {"total_power_W": {"value": 100.0, "source": "EEBUS LPC"}}
    assert entries[0]["limits_to_root"] == power
    assert entries[0]["limits_to_leaves"] == power
    assert entries[1]["limits_to_root"] == {}
    assert entries[1]["limits_to_leaves"] == {}
    span = (_time(entries[1]["timestamp"]) - _time(entries[0]["timestamp"])).total_seconds()
    assert abs(span - 3723) <= 1
    assert limited["schedule_export"] == []
    assert limited["schedule_setpoints"] == []
    assert sim.approvals[0].approve is True
