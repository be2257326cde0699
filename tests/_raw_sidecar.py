"""A sidecar that sends whatever bytes a test wants: a real gRPC server on raw HTTP/2 (h2).

grpclib's server encodes only valid messages, so this one writes the frames itself. Every unary
call gets an empty message (all defaults) unless `replies[method]` says otherwise (raw message
bytes, or raw DATA bytes including the 5-byte gRPC prefix via `framed_replies`). AddUseCase
answers `localhost:<own port>`, so the cs_lpc service is served here too. The two subscription
streams stay open and send what the test puts into `use_case_events` / `discovery_events`:
message bytes, or `CUT_MID_MESSAGE` (a prefix announcing 100 bytes, 10 of them, end of stream).

    async with open_raw_sidecar() as sidecar:
        sidecar.port; sidecar.calls; await sidecar.wait_for_call("SetConfig", count=2)
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

CUT_MID_MESSAGE: Final = object()
_STREAMS = ("SubscribeUseCaseEvents", "SubscribeDiscoveryEvents")


def framed(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@attrs.define
class RawSidecar:
    port: int = 0
    replies: dict[str, bytes] = attrs.field(factory=dict)
    framed_replies: dict[str, bytes] = attrs.field(factory=dict)
    calls: list[str] = attrs.field(factory=list)
    settings_delay_s: float = 0.0  # how long a new connection waits for the server's SETTINGS
    use_case_events: trio.MemorySendChannel[object] | None = None
    discovery_events: trio.MemorySendChannel[object] | None = None
    _use_case_receive: trio.MemoryReceiveChannel[object] | None = None
    _discovery_receive: trio.MemoryReceiveChannel[object] | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.use_case_events, self._use_case_receive = trio.open_memory_channel[object](math.inf)
        self.discovery_events, self._discovery_receive = trio.open_memory_channel[object](math.inf)

    def _record(self, method: str) -> None:
        self.calls.append(method)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_call(self, method: str, *, count: int = 1, limit_s: float = 10.0) -> None:
        with trio.fail_after(limit_s):
            while self.calls.count(method) < count:
                await self._changed.wait()

    # -- the server -----------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        lock = trio.Lock()
        paths: dict[int, str] = {}

        async def flush() -> None:
            async with lock:
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)

        async with trio.open_nursery() as nursery:
            await trio.sleep(self.settings_delay_s)
            await flush()
            try:
                async for chunk in stream:
                    for event in conn.receive_data(chunk):
                        if isinstance(event, h2.events.RequestReceived):
                            paths[event.stream_id] = dict(event.headers)[b":path"].decode()
                        elif isinstance(event, h2.events.DataReceived):
                            conn.acknowledge_received_data(
                                event.flow_controlled_length, event.stream_id
                            )
                        elif isinstance(event, h2.events.StreamEnded):
                            method = paths[event.stream_id].rsplit("/", 1)[-1]
                            self._record(method)
                            self._respond_headers(conn, event.stream_id)
                            if method in _STREAMS:
                                nursery.start_soon(self._pump, conn, event.stream_id, method, flush)
                            else:
                                self._respond_unary(conn, event.stream_id, method)
                    await flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.H2Error):
                pass
            finally:
                nursery.cancel_scope.cancel()
                await stream.aclose()

    @staticmethod
    def _respond_headers(conn: h2.connection.H2Connection, stream_id: int) -> None:
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])

    def _respond_unary(self, conn: h2.connection.H2Connection, stream_id: int, method: str) -> None:
        if method in self.framed_replies:
            data = self.framed_replies[method]
        elif method in self.replies:
            data = framed(self.replies[method])
        elif method == "AddUseCase":
            endpoint = f"localhost:{self.port}".encode()
            data = framed(b"\x0a" + bytes([len(endpoint)]) + endpoint)  # field 1, string
        else:
            data = framed(b"")
        conn.send_data(stream_id, data)
        conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)

    async def _pump(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        method: str,
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        receive = (
            self._use_case_receive
            if method == "SubscribeUseCaseEvents"
            else self._discovery_receive
        )
        assert receive is not None
        async for item in receive:
            try:
                if item is CUT_MID_MESSAGE:
                    conn.send_data(stream_id, b"\x00" + struct.pack(">I", 100) + b"x" * 10)
                    conn.end_stream(stream_id)
                    await flush()
                    return
                assert isinstance(item, bytes)
                conn.send_data(stream_id, framed(item))
            except h2.exceptions.StreamClosedError:
                return  # the client cancelled this subscription (RST_STREAM): it is gone
            await flush()


@asynccontextmanager
async def open_raw_sidecar() -> AsyncIterator[RawSidecar]:
    sidecar = RawSidecar()
    listener = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    sidecar.port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            trio.serve_listeners, sidecar._serve_connection, [trio.SocketListener(listener)]
        )
        try:
            yield sidecar
        finally:
            nursery.cancel_scope.cancel()
