"""The rpcapi sink against a fake RpcApi server (tests/_fake_rpcapi.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio_websocket

from eebus_bridge.backoff import BackoffPolicy
from eebus_bridge.config import LpcConfig, RpcApiOutput
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks.rpcapi import RpcApiSink, evse_powers
from tests._broker import LogWatcher, free_port
from tests._fake_rpcapi import FakeRpcApi, running_fake_rpcapi
from tests._publications import failsafe, limited, limited_for, unlimited

FAST = BackoffPolicy(initial_s=0.05, maximum_s=0.3, healthy_s=5.0)
LPC = LpcConfig(max_nominal_power_W=22000.0, failsafe_limit_W=4200.0)
SET_POWER = "EVSE.SetDCChargingPower"


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    with LogWatcher() as watcher:
        yield watcher


async def _run_forever(sink: RpcApiSink, latest: LatestValue[Publication]) -> None:
    await sink.run(latest)
    pytest.fail("the sink returned")


async def _power_calls(server: FakeRpcApi, count: int, within_s: float = 5.0) -> list[Any]:
    await server.changes.wait_until(lambda: len(server.power_calls()) >= count, within_s)
    return server.power_calls()


def test_split_rules() -> None:
    assert evse_powers(4200.0, (1, 2), split="each", unlimited_W=22000.0) == [
        (1, 4200.0),
        (2, 4200.0),
    ]
    assert evse_powers(4200.0, (1, 2, 3), split="equal", unlimited_W=22000.0) == [
        (1, 1400.0),
        (2, 1400.0),
        (3, 1400.0),
    ]
    # "unlimited" is a per-EVSE "no cap" value: never divided
    assert evse_powers(None, (1, 2), split="equal", unlimited_W=22000.0) == [
        (1, 22000.0),
        (2, 22000.0),
    ]


async def test_hello_first_then_one_call_per_evse_for_each_state() -> None:
    async with running_fake_rpcapi(evse_indices=(1, 2)) as server:
        sink = RpcApiSink(RpcApiOutput(url=server.url, evse_indices=(1, 2)), LPC, backoff=FAST)
        assert sink.name == f"rpcapi[{server.url}]"
        latest: LatestValue[Publication] = LatestValue()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            expected: list[tuple[int, float]] = []
            for publication, power in [
                (failsafe(4200.0, state="Init"), 4200.0),
                (limited(3000.0), 3000.0),
                (limited_for(2500.0, timedelta(minutes=10)), 2500.0),
                (unlimited(), 22000.0),  # [lpc] max_nominal_power_W
                (failsafe(4100.0), 4100.0),
            ]:
                latest.set(publication)
                expected += [(1, power), (2, power)]
                await _power_calls(server, len(expected))
            nursery.cancel_scope.cancel()
    assert server.power_calls() == expected
    assert server.calls[0].method == "API.Hello"
    assert server.calls_of("ChargePoint.GetEVSEInfos") == []  # indices were configured
    ids = [call.request_id for call in server.calls]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert server.connections == 1
    assert server.disconnected_for == []


async def test_equal_split_and_configured_unlimited_power() -> None:
    async with running_fake_rpcapi(evse_indices=(1, 2, 3)) as server:
        output = RpcApiOutput(
            url=server.url, evse_indices=(1, 2, 3), split="equal", unlimited_power_W=11000.0
        )
        sink = RpcApiSink(output, LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            latest.set(limited(4200.0))
            await _power_calls(server, 3)
            latest.set(unlimited())
            await _power_calls(server, 6)
            nursery.cancel_scope.cancel()
    assert server.power_calls() == [
        (1, 1400.0),
        (2, 1400.0),
        (3, 1400.0),
        (1, 11000.0),
        (2, 11000.0),
        (3, 11000.0),
    ]


async def test_evses_are_discovered_when_none_are_configured() -> None:
    async with running_fake_rpcapi(evse_indices=(2, 5)) as server:
        sink = RpcApiSink(RpcApiOutput(url=server.url), LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(7000.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await _power_calls(server, 2)
            nursery.cancel_scope.cancel()
    assert [call.method for call in server.calls[:2]] == ["API.Hello", "ChargePoint.GetEVSEInfos"]
    assert server.power_calls() == [(2, 7000.0), (5, 7000.0)]


async def test_discovery_failure_is_retried_over_a_new_connection(logs: LogWatcher) -> None:
    async with running_fake_rpcapi(evse_indices=(1,)) as server:
        server.answer_errors("ChargePoint.GetEVSEInfos", "ErrorNoDataAvailable")
        sink = RpcApiSink(RpcApiOutput(url=server.url), LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(5000.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await _power_calls(server, 1)
            nursery.cancel_scope.cancel()
    assert logs.matching(logging.WARNING, "ErrorNoDataAvailable; reconnecting in")
    assert server.connections == 2
    assert server.power_calls() == [(1, 5000.0)]


async def _first_message_or_close(port: int, send: str | None) -> str | None:
    """Connect as a bare client (owning the TCP stream, see stack-notes), optionally send
    one message, and return the first message received, None when the server closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, f"127.0.0.1:{port}", "/")
            if send is not None:
                await ws.send_message(send)
            try:
                with trio.fail_after(5):
                    message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                message = None
            nursery.cancel_scope.cancel()
        return message if isinstance(message, str) or message is None else message.decode()
    finally:
        await stream.aclose()


async def test_the_fake_disconnects_clients_without_hello() -> None:
    async with running_fake_rpcapi(hello_timeout_s=0.2) as server:
        assert await _first_message_or_close(server.port, None) is None
        wrong_first = '{"jsonrpc": "2.0", "method": "EVSE.GetInfo", "id": 1}'
        assert await _first_message_or_close(server.port, wrong_first) is None
        hello = '{"jsonrpc": "2.0", "method": "API.Hello", "id": 1}'
        answer = await _first_message_or_close(server.port, hello)
        assert answer is not None
        assert '"api_version": "1.0.0"' in answer
    assert server.disconnected_for == ["no API.Hello in time", "EVSE.GetInfo before API.Hello"]


async def test_reconnects_after_an_abrupt_disconnect_and_resends_the_current_limit(
    logs: LogWatcher,
) -> None:
    async with running_fake_rpcapi(evse_indices=(1,)) as server:
        sink = RpcApiSink(RpcApiOutput(url=server.url, evse_indices=(1,)), LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(4200.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await _power_calls(server, 1)
            await server.drop_connections()
            await logs.wait_for(logging.WARNING, "reconnecting in")
            await _power_calls(server, 2)
            await server.drop_connections()
            latest.set(limited(3000.0))  # while disconnected: the newest is what gets sent
            await _power_calls(server, 3)
            nursery.cancel_scope.cancel()
    assert server.power_calls() == [(1, 4200.0), (1, 4200.0), (1, 3000.0)]
    assert server.connections == 3
    hellos = server.calls_of("API.Hello")
    assert [call.connection for call in hellos] == [1, 2, 3]
    for number in (1, 2, 3):
        first = next(call for call in server.calls if call.connection == number)
        assert first.method == "API.Hello"


async def test_server_down_at_start_is_retried(logs: LogWatcher) -> None:
    port = free_port()
    sink = RpcApiSink(
        RpcApiOutput(url=f"ws://127.0.0.1:{port}/", evse_indices=(1,)), LPC, backoff=FAST
    )
    latest: LatestValue[Publication] = LatestValue()
    latest.set(limited(4200.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run_forever, sink, latest)
        await logs.wait_for(logging.WARNING, "reconnecting in", count=2)
        server = FakeRpcApi(evse_indices=(1,))
        server.port = port
        await nursery.start(server.serve)
        await _power_calls(server, 1)
        nursery.cancel_scope.cancel()
    assert server.power_calls() == [(1, 4200.0)]


@pytest.mark.parametrize("jsonrpc_error", [False, True], ids=["result-error", "jsonrpc-error"])
async def test_error_answers_are_logged_and_retried(logs: LogWatcher, jsonrpc_error: bool) -> None:
    async with running_fake_rpcapi(evse_indices=(1,)) as server:
        if jsonrpc_error:
            server.answer_jsonrpc_error(SET_POWER, count=2)
        else:
            server.answer_errors(SET_POWER, "ErrorValuesNotApplied", "ErrorOutOfRange")
        sink = RpcApiSink(RpcApiOutput(url=server.url, evse_indices=(1,)), LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(4200.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await _power_calls(server, 3)
            await logs.wait_for(logging.INFO, "sent limits for state Limited")
            nursery.cancel_scope.cancel()
    assert server.power_calls() == [(1, 4200.0)] * 3
    warnings = logs.matching(logging.WARNING, "not applied")
    assert len(warnings) == 2
    if jsonrpc_error:
        assert "JSON-RPC error -32000 simulated failure" in warnings[0]
    else:
        assert "ErrorValuesNotApplied" in warnings[0]
        assert "ErrorOutOfRange" in warnings[1]
    assert server.connections == 1  # an error answer is not a reason to reconnect


async def test_a_newer_limit_replaces_the_one_being_retried(logs: LogWatcher) -> None:
    async with running_fake_rpcapi(evse_indices=(1,)) as server:
        server.answer_errors(SET_POWER, "ErrorValuesNotApplied")
        slow_retry = BackoffPolicy(initial_s=30.0, maximum_s=30.0, jitter=0.0)
        sink = RpcApiSink(RpcApiOutput(url=server.url, evse_indices=(1,)), LPC, backoff=slow_retry)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(4200.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await _power_calls(server, 1)
            await logs.wait_for(logging.WARNING, "sending again in 30.0 s")
            latest.set(limited(3000.0))
            await _power_calls(server, 2, within_s=5)  # far sooner than the 30 s retry
            latest.set(limited(2000.0))
            await _power_calls(server, 3)
            nursery.cancel_scope.cancel()
    assert server.power_calls() == [(1, 4200.0), (1, 3000.0), (1, 2000.0)]


async def test_an_unanswered_call_ends_the_session(logs: LogWatcher) -> None:
    async with running_fake_rpcapi(evse_indices=(1,)) as server:
        server.never_answer(SET_POWER)
        sink = RpcApiSink(
            RpcApiOutput(url=server.url, evse_indices=(1,)),
            LPC,
            backoff=FAST,
            call_timeout_s=0.2,
        )
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(4200.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await logs.wait_for(logging.WARNING, f"no answer to {SET_POWER} within 0.2 s")
            await server.changes.wait_until(lambda: server.connections >= 2)
            nursery.cancel_scope.cancel()


async def test_notifications_are_read_and_do_not_disturb(logs: LogWatcher) -> None:
    async with running_fake_rpcapi(evse_indices=(1,)) as server:
        sink = RpcApiSink(RpcApiOutput(url=server.url, evse_indices=(1,)), LPC, backoff=FAST)
        latest: LatestValue[Publication] = LatestValue()
        latest.set(limited(4200.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_forever, sink, latest)
            await _power_calls(server, 1)
            # Plenty of notifications (about 2 MB) while the sink sits idle between limits:
            # it must read them all, in order, without ever answering or choking on them.
            status = {"evse_index": 1, "evse_status": {"state": "Charging", "pad": "x" * 4000}}
            with trio.fail_after(10):
                for _ in range(500):
                    await server.notify("EVSE.StatusChanged", status)
                await server.notify("EVSE.MeterDataChanged", {"evse_index": 1, "meter_data": {}})
            await logs.wait_for(logging.DEBUG, "notification EVSE.MeterDataChanged")
            assert len(logs.matching(logging.DEBUG, "notification EVSE.StatusChanged")) == 500
            latest.set(limited(3000.0))
            await logs.wait_for(logging.INFO, "sent limits for state Limited (3000 W)")
            nursery.cancel_scope.cancel()
    assert server.power_calls() == [(1, 4200.0), (1, 3000.0)]
    assert server.connections == 1
