"""A fake EVerest RpcApi server (JSON-RPC 2.0 over WebSocket) for sink tests.

Follows spec/everest.md: a client must send `API.Hello` first and within `hello_timeout_s`
(5 s in EVerest, shorter in tests), else it is disconnected; `ChargePoint.GetEVSEInfos` lists
the EVSEs as `{"infos": [{"index": ..., ...}], "error": "NoError"}`; `EVSE.SetDCChargingPower`
is recorded and answered `{"error": "NoError"}` unless the test asked for error results.
A test can also push notifications to connected clients and drop connections abruptly (TCP
closed without a WebSocket close frame, as when EVerest crashes).

The server accepts TCP itself and wraps each stream (trio-websocket's public
`wrap_server_stream`), so it owns the socket and can close it; every handler catches what a
closing peer raises, since an escaping exception would take the whole server down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import attrs
import trio
import trio_websocket

from tests._broker import Changes

logger = logging.getLogger(__name__)

_CLOSED_ERRORS = (
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


@attrs.frozen
class Call:
    connection: int
    method: str
    params: Any
    request_id: Any


@attrs.define
class _Client:
    number: int
    ws: trio_websocket.WebSocketConnection
    stream: trio.SocketStream
    scope: trio.CancelScope
    said_hello: bool = False


class FakeRpcApi:
    def __init__(
        self,
        evse_indices: tuple[int, ...] = (1,),
        *,
        hello_timeout_s: float = 5.0,
        evse_infos: list[dict[str, Any]] | None = None,
    ) -> None:
        self.evse_indices = evse_indices
        self.hello_timeout_s = hello_timeout_s
        self._evse_infos = evse_infos
        self.port = 0
        self.calls: list[Call] = []
        self.connections = 0
        self.disconnected_for: list[str] = []  # why the server ended a connection itself
        self.handler_errors: list[BaseException] = []
        self.changes = Changes()
        self._clients: dict[int, _Client] = {}
        # method -> error values to answer, one per call, before answering NoError again
        self._error_results: dict[str, list[str]] = {}
        self._jsonrpc_errors: dict[str, int] = {}
        self._silent_methods: set[str] = set()

    # -- what tests look at ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def power_calls(self) -> list[tuple[int, float]]:
        return [
            (call.params["evse_index"], call.params["max_power"])
            for call in self.calls_of("EVSE.SetDCChargingPower")
        ]

    @property
    def open_clients(self) -> int:
        return len(self._clients)

    # -- what tests ask the server to do -----------------------------------------------

    def answer_errors(self, method: str, *errors: str) -> None:
        """Answer the next calls of `method` with these `result.error` values."""
        self._error_results.setdefault(method, []).extend(errors)

    def answer_jsonrpc_error(self, method: str, count: int = 1) -> None:
        """Answer the next `count` calls of `method` with a JSON-RPC error object."""
        self._jsonrpc_errors[method] = self._jsonrpc_errors.get(method, 0) + count

    def never_answer(self, method: str) -> None:
        self._silent_methods.add(method)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification (no id) to every client that said hello."""
        text = json.dumps({"jsonrpc": "2.0", "method": method, "params": params})
        for client in list(self._clients.values()):
            if client.said_hello:
                with suppress(*_CLOSED_ERRORS):
                    await client.ws.send_message(text)

    async def drop_connections(self) -> None:
        """Close every client's TCP connection without a WebSocket close frame."""
        for client in list(self._clients.values()):
            client.scope.cancel()
            with trio.CancelScope(shield=True):
                await client.stream.aclose()

    # -- serving -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle_stream, listeners)
            task_status.started()

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(5):
                        request = await trio_websocket.wrap_server_stream(nursery, stream)
                        ws = await request.accept()
                    client = _Client(number, ws, stream, nursery.cancel_scope)
                    self._clients[number] = client
                    self.changes.pulse()
                    await self._converse(client)
                finally:
                    nursery.cancel_scope.cancel()
        except* _CLOSED_ERRORS:
            pass
        except* trio.TooSlowError:
            self.disconnected_for.append("handshake timeout")
        except* Exception as group:
            self.handler_errors.append(group)
            logger.exception("fake RpcApi handler failed")
        finally:
            self._clients.pop(number, None)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self.changes.pulse()

    async def _converse(self, client: _Client) -> None:
        with trio.move_on_after(self.hello_timeout_s) as hello_wait:
            first = await client.ws.get_message()
        if hello_wait.cancelled_caught:
            self.disconnected_for.append("no API.Hello in time")
            return
        message = json.loads(first)
        if message.get("method") != "API.Hello":
            self._record(client, message)
            self.disconnected_for.append(f"{message.get('method')} before API.Hello")
            return
        client.said_hello = True
        await self._answer(client, message)
        while True:
            await self._answer(client, json.loads(await client.ws.get_message()))

    def _record(self, client: _Client, message: dict[str, Any]) -> None:
        self.calls.append(
            Call(client.number, message.get("method", ""), message.get("params"), message.get("id"))
        )
        self.changes.pulse()

    async def _answer(self, client: _Client, message: dict[str, Any]) -> None:
        self._record(client, message)
        method = message.get("method", "")
        if method in self._silent_methods:
            return
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message.get("id")}
        if self._jsonrpc_errors.get(method, 0) > 0:
            self._jsonrpc_errors[method] -= 1
            reply["error"] = {"code": -32000, "message": "simulated failure"}
        else:
            reply["result"] = self._result(method, message.get("params"))
        await client.ws.send_message(json.dumps(reply))

    def _result(self, method: str, params: Any) -> dict[str, Any]:
        queued = self._error_results.get(method)
        error = queued.pop(0) if queued else "NoError"
        if method == "API.Hello":
            return {
                "authentication_required": False,
                "api_version": "1.0.0",
                "charger_info": {"vendor": "Fake", "model": "RpcApi"},
            }
        if method == "ChargePoint.GetEVSEInfos":
            infos = self._evse_infos
            if infos is None:
                infos = [
                    {
                        "index": index,
                        "id": f"DE*FAK*E{index}",
                        "available_connectors": [{"index": 1, "type": "cType2"}],
                        "supported_energy_transfer_modes": ["AC_three_phase_core"],
                    }
                    for index in self.evse_indices
                ]
            return {"infos": infos, "error": error}
        if method == "EVSE.SetDCChargingPower":
            if error == "NoError" and params.get("evse_index") not in self.evse_indices:
                error = "ErrorInvalidEVSEIndex"
            return {"error": error}
        return {"error": "ErrorInvalidParameter"}


@asynccontextmanager
async def running_fake_rpcapi(**options: Any) -> AsyncIterator[FakeRpcApi]:
    server = FakeRpcApi(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
    assert server.handler_errors == [], server.handler_errors
