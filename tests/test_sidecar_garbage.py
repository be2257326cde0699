"""A sidecar that sends garbage (issue 13.4): invalid UTF-8 in strings, values out of range,
unknown enum numbers, a stream closed in the middle of a message. Each is logged and survived:
the bridge never crashes, never publishes an invalid limit, and keeps (or re-establishes) its
connection. The sidecar is a real gRPC server on raw HTTP/2 (tests/_raw_sidecar.py).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from eebus_bridge.generated import common_types, cs_lpc
from eebus_bridge.generated import control_service as cs
from eebus_bridge.island import open_island
from tests._bridge_fixtures import (
    EG_SKI,
    GRPC_TRANSPORT,
    make_config,
    running_bridge,
    valid_limit,
)
from tests._raw_sidecar import CUT_MID_MESSAGE, RawSidecar, open_raw_sidecar
from tests._util import wait_until

LPC = cs.UseCase(
    actor=cs.UseCaseActorTypeEnum.ControllableSystem,
    name=cs.UseCaseNameTypeEnum.limitationOfPowerConsumption,
)


def event(name: str, ski: str = EG_SKI, use_case: cs.UseCase = LPC) -> bytes:
    return bytes(
        cs.SubscribeUseCaseEventsResponse(
            remote_ski=ski, use_case_event=cs.UseCaseEvent(use_case=use_case, event=name)
        )
    )


def invalid_utf8_ski(name: str) -> bytes:
    return event(name, ski="A" * 40).replace(b"A" * 40, b"\xff\xfe" * 20)


def consumption_limit(value: float, *, active: bool = True, duration_ns: int = 0) -> bytes:
    return bytes(
        cs_lpc.ConsumptionLimitResponse(
            load_limit=common_types.LoadLimit(
                value=value, is_active=active, duration_nanoseconds=duration_ns
            )
        )
    )


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and text in r.getMessage()
    ]


async def _limit_event(sidecar: RawSidecar, reply: bytes) -> None:
    reads = sidecar.calls.count("ConsumptionLimit")
    sidecar.replies["ConsumptionLimit"] = reply
    assert sidecar.use_case_events is not None
    sidecar.use_case_events.send_nowait(event("DataUpdateLimit"))
    await sidecar.wait_for_call("ConsumptionLimit", count=reads + 1)


async def test_garbage_from_the_sidecar_is_logged_and_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with open_island(), open_raw_sidecar() as sidecar:
        config = make_config(tmp_path, grpc_port=sidecar.port)
        async with running_bridge(config) as (bridge, publications):
            with trio.fail_after(15):
                await bridge.connected.wait()
            assert sidecar.use_case_events is not None
            assert sidecar.discovery_events is not None
            events = sidecar.use_case_events

            # Invalid UTF-8 in the SKI of an event: that message is dropped, the stream reads on.
            events.send_nowait(invalid_utf8_ski("DataUpdateLimit"))
            await wait_until(lambda: bool(warnings_about(caplog, "does not decode")))
            # ... and in a discovery event.
            sidecar.discovery_events.send_nowait(
                bytes(
                    cs.DiscoveryEvent(type=cs.DiscoveryEventType.DISCOVERED, remote_ski="A" * 40)
                ).replace(b"A" * 40, b"\xc3" * 40)
            )

            # Values out of range: the engine refuses them, nothing invalid is published.
            for value in (math.nan, -5.0, math.inf, -math.inf):
                await _limit_event(sidecar, consumption_limit(value))
            await _limit_event(sidecar, consumption_limit(1e308, duration_ns=2**63 - 1))
            await _limit_event(sidecar, consumption_limit(100.0, duration_ns=-(2**63)))

            # A ConsumptionLimit answer that does not decode: a warning, the bridge goes on.
            await _limit_event(sidecar, b"\x0a\x05\x25\xff")  # load_limit cut inside a double
            await wait_until(lambda: bool(warnings_about(caplog, "not a valid message")))

            # Unknown enum numbers: a discovery type and a use case nobody defined.
            sidecar.discovery_events.send_nowait(
                bytes(
                    cs.DiscoveryEvent(type=cs.DiscoveryEventType.DISCOVERED, remote_ski=EG_SKI)
                ).replace(b"\x08\x01", b"\x08\x63", 1)
            )
            odd = cs.UseCase(
                actor=cs.UseCaseActorTypeEnum.ControllableSystem,
                name=cs.UseCaseNameTypeEnum.limitationOfPowerConsumption,
            )
            events.send_nowait(
                event("DataUpdateHeartbeat", use_case=odd).replace(b"\x08\x06", b"\x08\x7f")
            )
            events.send_nowait(event("NoSuchEvent"))
            await wait_until(lambda: bool(warnings_about(caplog, "ignored unknown event")))

            # A valid limit still works after all that.
            await _limit_event(sidecar, consumption_limit(2000.0))
            await publications.wait_for(lambda p: p.state == "Limited" and p.limit_W == 2000.0)

            # The event stream closed in the middle of a message: the connection is redone.
            events.send_nowait(CUT_MID_MESSAGE)
            await sidecar.wait_for_call("SetConfig", count=2, limit_s=15)
            with trio.fail_after(15):
                while bridge.connections < 2:
                    await bridge.connected.wait()
                    await trio.lowlevel.checkpoint()
            lost = warnings_about(caplog, "sidecar connection lost")
            assert lost
            assert "SubscribeUseCaseEvents" in lost[0]
            if GRPC_TRANSPORT == "grpclib":  # grpcio says "Stream removed" (status UNKNOWN)
                assert "broke the stream's framing" in lost[0]
            assert publications.states[-1] == "Limited"  # the LPC state survived

        assert all(valid_limit(p) for p in publications.history)
        # 1e308 W is finite and >= 0: allowed, it simply has no effect (spec/lpc.md); the expired
        # one (duration -2^63 ns) and the invalid ones never made it.
        assert [p.limit_W for p in publications.history if p.state == "Limited"] == [1e308, 2000.0]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert "Traceback" not in caplog.text
