"""The two HTTP/2 stacks the sidecar client can speak gRPC with, behind one small interface.

Both live on the asyncio side of the trio-asyncio island (`island.py`) and carry messages as
bytes: the client (`sidecar_client.py`) encodes requests and decodes answers itself, so a
message that does not decode is one bad answer whichever stack carried it. Each stack turns its
own failures into the client's three exceptions (`SidecarRpcError`, `SidecarUnreachable`,
`SidecarProtocolError`).

- `grpclib` (the default, `[eebus] grpc_transport = "grpclib"`): pure Python, installs and runs
  wherever Python does (musl, Yocto images, any CPU). Every frame is parsed and built in
  Python on the Trio thread: 1.2-1.4 ms of CPU per call on the benchmark machine.
- `grpcio` (`grpc_transport = "grpcio"`, the `grpcio` extra): grpcio's asyncio API (grpc.aio)
  on the same island loop. The C core does the HTTP/2 work in its own thread without the GIL
  and wakes the loop through a socket it watches with `add_reader`; ~1.0 ms of CPU per call
  and ~0.5 ms less latency per event (README "Performance"). Opt-in: a large native package
  (wheels for x86-64, aarch64 and glibc armv7l; elsewhere it compiles from source, which takes
  hours on a small board), and the pure-Python stack is the design's default.

Only this module imports grpclib or grpcio (grpcio only when chosen).
"""

from __future__ import annotations

# trio_asyncio before grpclib: grpclib keeps a reference to asyncio.current_task at import, and
# on Python >= 3.12 only trio_asyncio's replacement of it sees trio-asyncio's loop.
import trio_asyncio  # noqa: F401  # isort: skip

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, TypeVar, get_args

import grpclib.client
import grpclib.encoding.base
import grpclib.exceptions
from grpclib.const import Cardinality, Status

from eebus_bridge.config import GrpcTransportName

T = TypeVar("T")

TransportName = GrpcTransportName  # defined with the config, which must not import this module
TRANSPORTS: tuple[TransportName, ...] = get_args(TransportName)


class SidecarRpcError(Exception):
    """The sidecar answered an RPC with an error status (it uses UNKNOWN plus a text)."""

    def __init__(self, rpc: str, status: str, message: str) -> None:
        super().__init__(f"{rpc}: {message or status}")
        self.rpc = rpc
        self.status = status
        self.message = message


class SidecarUnreachable(Exception):
    """No answer from the sidecar: connection refused or reset, or the deadline passed."""


class SidecarProtocolError(SidecarUnreachable):
    """The sidecar broke the gRPC framing of a stream (e.g. closed it mid-message)."""


class ServerStream(Protocol):
    async def recv(self) -> bytes | None:
        """The next message's bytes; None when the sidecar ends the stream."""


class Transport(Protocol):
    """One gRPC channel (one HTTP/2 connection) to a sidecar service; asyncio side only."""

    async def unary(
        self,
        rpc: str,
        path: str,
        request: bytes,
        timeout_s: float,
        on_sent: Callable[[], None] | None = None,
    ) -> bytes:
        """One unary call with a deadline of `timeout_s`; raises the client's exceptions.

        `on_sent` is called at most once, from the loop, once the request is on its way:
        after its frames went to the socket (grpclib; not called when there was no connection
        to send on) or after the call was handed to the C core (grpcio, which may still fail
        to deliver it). Before the answer comes, so work that should neither delay the request
        nor wait for the answer can run there."""

    def stream(self, rpc: str, path: str, request: bytes) -> Any:
        """An async context manager yielding a `ServerStream`. Once it is entered, the request
        is sent, or (grpcio) queued ahead of every call made after it: the handshake's order,
        subscriptions before StartService, depends on that."""

    async def aclose(self) -> None:
        """Release the connection; cancels what is in flight without waiting for it."""


def open_transport(name: TransportName, host: str, port: int) -> Transport:
    """A channel of the named stack to host:port; call on the asyncio side."""
    if name == "grpcio":
        return _GrpcioTransport(host, port)
    return _GrpclibTransport(host, port)


@contextmanager
def _failures_as(translate: Callable[[Exception], BaseException]) -> Iterator[None]:
    """Raise what `translate` makes of an exception from inside: a sidecar failure, or the
    exception itself (re-raised as it is) when it is none."""
    try:
        yield
    except Exception as exc:
        failure = translate(exc)
        if failure is exc:
            raise
        raise failure from exc


# -- grpclib ----------------------------------------------------------------------------------


class CoalescingTransport:
    """An asyncio transport proxy that sends what grpclib writes within one loop step in one go.

    grpclib writes each HTTP/2 frame of a call separately (request HEADERS, then DATA; a server
    also sends trailers), and asyncio sends each write at once with TCP_NODELAY: two or three
    segments per call, each waking the peer. Joined at the end of the step, the call is one
    segment and one wake-up, which halves the per-call cost on loopback. Nothing waits longer
    than the current loop step. Used by the grpclib transport and by the HEMS simulator.
    """

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing_protocol(protocol: T, loop: asyncio.AbstractEventLoop) -> T:
    """Make an asyncio protocol (grpclib's H2Protocol) write through a CoalescingTransport."""
    made = protocol.connection_made  # type: ignore[attr-defined]

    def connection_made(transport: asyncio.Transport) -> None:
        made(CoalescingTransport(transport, loop))

    protocol.connection_made = connection_made  # type: ignore[attr-defined]
    return protocol


class _BytesCodec(grpclib.encoding.base.CodecBase):
    """Messages pass through as bytes (the client encodes and decodes them)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class _CoalescingChannel(grpclib.client.Channel):
    """grpclib's Channel, writing each call's frames in one segment (CoalescingTransport)."""

    def _protocol_factory(self) -> Any:
        return coalescing_protocol(super()._protocol_factory(), self._loop)


# What grpclib raises when the framing itself is broken: it asserts that a message came whole
# and refuses the compressed flag.
_BROKEN_FRAMING = (AssertionError, NotImplementedError)


def _grpclib_failure(rpc: str, exc: BaseException) -> BaseException:
    if isinstance(exc, grpclib.exceptions.GRPCError):
        if exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
            return SidecarUnreachable(f"{rpc}: {exc.status.name} {exc.message}")
        return SidecarRpcError(rpc, exc.status.name, exc.message or "")
    if isinstance(exc, TimeoutError | OSError | grpclib.exceptions.StreamTerminatedError):
        return SidecarUnreachable(f"{rpc}: {type(exc).__name__} {exc}".strip())
    return exc


class _GrpclibStream:
    def __init__(self, stream: Any, rpc: str) -> None:
        self._stream = stream
        self._rpc = rpc

    async def recv(self) -> bytes | None:
        try:
            with _failures_as(lambda exc: _grpclib_failure(self._rpc, exc)):
                data: bytes | None = await self._stream.recv_message()
        except _BROKEN_FRAMING as exc:
            raise SidecarProtocolError(
                f"{self._rpc}: the sidecar broke the stream's framing "
                f"({type(exc).__name__}: {exc or 'message cut short'})"
            ) from exc
        return data


class _GrpclibTransport:
    def __init__(self, host: str, port: int) -> None:
        self._channel = _CoalescingChannel(host, port, codec=_BytesCodec())

    async def unary(
        self,
        rpc: str,
        path: str,
        request: bytes,
        timeout_s: float,
        on_sent: Callable[[], None] | None = None,
    ) -> bytes:
        try:
            with _failures_as(lambda exc: _grpclib_failure(rpc, exc)):
                async with self._channel.request(
                    path, Cardinality.UNARY_UNARY, bytes, bytes, timeout=timeout_s
                ) as stream:
                    await stream.send_message(request, end=True)
                    if on_sent is not None:
                        # After the CoalescingTransport's flush, which the frames queued.
                        asyncio.get_running_loop().call_soon(on_sent)
                    answer: bytes | None = await stream.recv_message()
        except _BROKEN_FRAMING as exc:
            raise SidecarRpcError(
                rpc, "UNDECODABLE", f"the sidecar's answer is not a valid message ({exc})"
            ) from exc
        if answer is None:
            raise SidecarRpcError(rpc, "UNDECODABLE", "the sidecar sent no answer")
        return answer

    @asynccontextmanager
    async def stream(self, rpc: str, path: str, request: bytes) -> AsyncIterator[ServerStream]:
        with _failures_as(lambda exc: _grpclib_failure(rpc, exc)):
            async with self._channel.request(path, Cardinality.UNARY_STREAM, bytes, bytes) as call:
                await call.send_message(request, end=True)
                yield _GrpclibStream(call, rpc)

    async def aclose(self) -> None:
        self._channel.close()


# -- grpcio (grpc.aio) ------------------------------------------------------------------------

# A local sidecar: no proxy (grpcio honours http_proxy), no retries of its own (the bridge
# decides), and a quick reconnect while a freshly started sidecar opens its port (the handshake
# retries SetConfig every 50-500 ms; grpcio's first backoff is 1 s by default). Not
# "grpc.min_reconnect_backoff_ms": despite its name the C core takes it as the minimum time a
# connection attempt may take, HTTP/2 handshake included; set to 50 ms, a sidecar (or the test
# suite's in-process simulator) that sent its SETTINGS frame 50 ms late was never connected.
_GRPCIO_OPTIONS = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
)


def _grpcio_failure(rpc: str, exc: BaseException, *, stream: bool = False) -> BaseException:
    import grpc

    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            return SidecarUnreachable(f"{rpc}: {code.name} {details}".strip())
        if stream and code is grpc.StatusCode.INTERNAL:
            # grpcio's C core reports a broken HTTP/2 or gRPC framing as INTERNAL.
            return SidecarProtocolError(
                f"{rpc}: the sidecar broke the stream's framing (INTERNAL: {details})"
            )
        return SidecarRpcError(rpc, code.name, details)
    if isinstance(exc, TimeoutError | OSError):
        return SidecarUnreachable(f"{rpc}: {type(exc).__name__} {exc}".strip())
    return exc


class _GrpcioStream:
    def __init__(self, call: Any, rpc: str, end: object) -> None:
        self._call = call
        self._rpc = rpc
        self._end = end  # grpc.aio.EOF

    async def recv(self) -> bytes | None:
        with _failures_as(lambda exc: _grpcio_failure(self._rpc, exc, stream=True)):
            data = await self._call.read()
        if data is self._end:
            return None
        return bytes(data)


class _GrpcioTransport:
    def __init__(self, host: str, port: int) -> None:
        import grpc.aio

        self._channel = grpc.aio.insecure_channel(f"{host}:{port}", options=_GRPCIO_OPTIONS)
        self._end = grpc.aio.EOF
        self._unary: dict[str, Any] = {}

    async def unary(
        self,
        rpc: str,
        path: str,
        request: bytes,
        timeout_s: float,
        on_sent: Callable[[], None] | None = None,
    ) -> bytes:
        method = self._unary.get(path)
        if method is None:  # no (de)serializers: bytes in and out
            method = self._unary[path] = self._channel.unary_unary(path)
        with _failures_as(lambda exc: _grpcio_failure(rpc, exc)):
            call = method(request, timeout=timeout_s)
            if on_sent is not None:
                # After the call's first step, which hands the request to the C core.
                asyncio.get_running_loop().call_soon(on_sent)
            return bytes(await call)

    @asynccontextmanager
    async def stream(self, rpc: str, path: str, request: bytes) -> AsyncIterator[ServerStream]:
        call = self._channel.unary_stream(path)(request)
        try:
            # The call's first step hands the request to the C core, which sends the calls of
            # a channel in the order they were handed over. (wait_for_connection() would also
            # wait for the sidecar's response headers, which come with its first event.)
            await asyncio.sleep(0)
            yield _GrpcioStream(call, rpc, self._end)
        finally:
            call.cancel()

    async def aclose(self) -> None:
        await self._channel.close(grace=None)  # cancels the calls in flight at once
