"""The simulator's server codec encodes each use-case event message object once (a quarter of
the simulator's CPU in a heartbeat flood went into encoding the same event again)."""

from __future__ import annotations

from eebus_bridge.generated import control_service as cs
from eebus_bridge.generated import cs_lpc
from eebus_bridge.generated.common_types import EntityAddress
from tools.hems_simulator.servers import EncodedOnceCodec

SKI = "5e1d6a3c0f4b2a7980c1d2e3f4a5b6c7d8e9f001"


def _event(name: str, ski: str = SKI) -> cs.SubscribeUseCaseEventsResponse:
    return cs.SubscribeUseCaseEventsResponse(
        remote_ski=ski,
        remote_entity_address=EntityAddress(entity_address=[1]),
        use_case_event=cs.UseCaseEvent(event=name),
    )


def test_an_event_object_is_encoded_once_and_decodes_back() -> None:
    codec = EncodedOnceCodec()
    event = _event("DataUpdateHeartbeat")
    first = codec.encode(event, cs.SubscribeUseCaseEventsResponse)
    assert codec.encode(event, cs.SubscribeUseCaseEventsResponse) is first  # not encoded again
    assert first == bytes(event)
    assert cs.SubscribeUseCaseEventsResponse.FromString(first) == event


def test_other_objects_and_other_messages_are_encoded_as_they_are() -> None:
    codec = EncodedOnceCodec()
    heartbeat, limit = _event("DataUpdateHeartbeat"), _event("DataUpdateLimit")
    assert codec.encode(heartbeat, cs.SubscribeUseCaseEventsResponse) == bytes(heartbeat)
    assert codec.encode(limit, cs.SubscribeUseCaseEventsResponse) == bytes(limit)
    response = cs_lpc.ConsumptionLimitResponse()
    assert codec.encode(response, cs_lpc.ConsumptionLimitResponse) == bytes(response)


def test_the_cache_stays_small_when_a_test_invents_skis() -> None:
    codec = EncodedOnceCodec()
    events = [_event("DataUpdateHeartbeat", f"{n:040x}") for n in range(1000)]
    for event in events:
        assert codec.encode(event, cs.SubscribeUseCaseEventsResponse) == bytes(event)
    assert len(codec._encoded) <= EncodedOnceCodec._LIMIT
