"""The rpcapi sink: EVerest's RpcApi, JSON-RPC 2.0 over WebSocket (EVerest >= 2026.02).

Per connection (spec/everest.md, "Output 2"):

1. `API.Hello` first: the server drops clients that do not send it within 5 s or send
   anything else first. The sink sends it right after the WebSocket handshake.
2. The EVSE indices: the configured `evse_indices`, or, when none are configured,
   `ChargePoint.GetEVSEInfos`. Its result is assumed to be `{"infos": [EVSEInfo, ...],
   "error": "NoError"}` with an integer `index` in every EVSEInfo (the shape of EVerest's RpcApi
   documentation; other fields are ignored).
3. For the current and then every newer publication, `EVSE.SetDCChargingPower {evse_index,
   max_power}` per EVSE. RpcApi has one scalar per EVSE and no schedule, so "unlimited" is sent
   as `unlimited_power_W` (default `[lpc] max_nominal_power_W`, a "no cap" value that is never
   split), and a limit is either repeated for every EVSE (split = "each") or divided equally
   over them (split = "equal").

A response whose `result.error` is not "NoError", or a JSON-RPC error object, means the limit
is not in force: it is logged and sent again with backoff, unless a newer limit arrives first,
which then replaces it. Disconnects, refused connections and unanswered calls end the session;
the sink reconnects with backoff and re-sends the current limit. Requests carry increasing ids
and responses are matched by id. One reader task per connection reads everything the server
sends, so notifications (`EVSE.StatusChanged`, ...) are consumed and logged at DEBUG instead of
piling up.

trio-websocket 0.12 leaves the client's TCP socket open when the server closes first
(stack-notes), so the sink opens the TCP stream itself and closes it in a `finally`. It does
not wait for a WebSocket closing handshake when it stops: EVerest sees the connection end,
exactly as after a crash, which it must handle anyway.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

from eebus_bridge.activity import ActivityFeed, record_delivery
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import LpcConfig, RpcApiOutput
from eebus_bridge.publication import LatestValue, Publication

logger = logging.getLogger(__name__)

NO_ERROR = "NoError"


class RpcSessionError(Exception):
    """The session cannot go on (closed, unanswered call, unusable answer): reconnect."""


class RpcErrorResponse(RpcSessionError):
    """The server answered a call with a JSON-RPC error object."""


@attrs.frozen
class _WebSocketUrl:
    host: str
    port: int
    resource: str
    secure: bool

    @property
    def host_header(self) -> str:
        default_port = 443 if self.secure else 80
        return self.host if self.port == default_port else f"{self.host}:{self.port}"


def _parse_url(url: str) -> _WebSocketUrl:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += f"?{parts.query}"
    port = parts.port if parts.port is not None else (443 if secure else 80)
    return _WebSocketUrl(host=parts.hostname, port=port, resource=resource, secure=secure)


def evse_powers(
    limit_W: float | None,
    evse_indices: tuple[int, ...],
    *,
    split: str,
    unlimited_W: float,
) -> list[tuple[int, float]]:
    """(evse_index, max_power) for every EVSE, following the split rule of the config."""
    if limit_W is None:
        return [(index, unlimited_W) for index in evse_indices]
    if split == "equal" and evse_indices:
        share = limit_W / len(evse_indices)
        return [(index, share) for index in evse_indices]
    return [(index, limit_W) for index in evse_indices]


@attrs.define
class _PendingCall:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: dict[str, Any] | None = None


def _describe_close(reason: trio_websocket.CloseReason | None) -> str:
    if reason is None:
        return "connection closed"
    text = f"connection closed ({reason.code} {reason.name}"
    if reason.reason:
        text += f": {reason.reason}"
    return text + ")"


class _JsonRpcPeer:
    """Requests with increasing ids over one WebSocket; the answers matched by id."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, name: str, timeout_s: float):
        self._ws = ws
        self._name = name
        self._timeout_s = timeout_s
        self._next_id = 1
        self._waiting: dict[int, _PendingCall] = {}

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The call's `result` object; RpcErrorResponse for a JSON-RPC error answer."""
        request_id = self._next_id
        self._next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            request["params"] = params
        pending = _PendingCall()
        self._waiting[request_id] = pending
        try:
            await self._ws.send_message(json.dumps(request, allow_nan=False))
            with trio.move_on_after(self._timeout_s):
                await pending.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        response = pending.response
        if response is None:
            raise RpcSessionError(f"no answer to {method} within {self._timeout_s:g} s")
        if "error" in response:
            error = response["error"]
            if isinstance(error, dict):
                detail = f"{error.get('code')} {error.get('message')}"
            else:
                detail = repr(error)
            raise RpcErrorResponse(f"{method} failed: JSON-RPC error {detail}")
        result = response.get("result")
        if not isinstance(result, dict):
            raise RpcSessionError(f"{method} answered a non-object result: {result!r}")
        return result

    async def read_messages(self) -> None:
        """Read everything the server sends until the connection ends (then raise)."""
        while True:
            try:
                raw = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                raise RpcSessionError(_describe_close(exc.reason)) from None
            try:
                message = json.loads(raw)
            except ValueError:
                logger.warning("%s: ignoring a message that is not JSON: %.200r", self._name, raw)
                continue
            if not isinstance(message, dict):
                logger.warning("%s: ignoring a non-object message: %.200r", self._name, raw)
                continue
            request_id = message.get("id")
            if "method" in message:
                # Notifications (EVSE.StatusChanged, EVSE.MeterDataChanged, ...) are of no use
                # to a limit sender; reading them keeps them from piling up.
                logger.debug("%s: notification %s", self._name, message.get("method"))
            elif isinstance(request_id, int) and ("result" in message or "error" in message):
                pending = self._waiting.get(request_id)
                if pending is None:
                    logger.debug("%s: answer to unknown request id %r", self._name, request_id)
                else:
                    pending.response = message
                    pending.done.set()
            else:
                logger.warning("%s: ignoring unexpected message: %.200r", self._name, raw)


# Everything that means "this session is over, reconnect": refused or dropped TCP, failed or
# timed-out WebSocket handshake, a closed WebSocket, an unanswered or unusable call.
_SESSION_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    RpcSessionError,
)


def _describe_group(group: BaseExceptionGroup[BaseException]) -> str:
    texts: list[str] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            texts.append(_describe_group(exc))
        elif isinstance(exc, trio.TooSlowError):
            texts.append("connect timed out")
        elif isinstance(exc, trio_websocket.ConnectionClosed):
            texts.append(_describe_close(exc.reason))
        else:
            texts.append(str(exc) or type(exc).__name__)
    return "; ".join(texts)


class RpcApiSink:
    def __init__(
        self,
        output: RpcApiOutput,
        lpc: LpcConfig,
        *,
        backoff: BackoffPolicy | None = None,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 10.0,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.output = output
        self.activity = activity if activity is not None else ActivityFeed()
        self.name = f"rpcapi[{output.url}]"
        self.unlimited_W = (
            output.unlimited_power_W
            if output.unlimited_power_W is not None
            else lpc.max_nominal_power_W
        )
        self._url = _parse_url(output.url)
        self._backoff_policy = backoff
        self._connect_timeout_s = connect_timeout_s
        self._call_timeout_s = call_timeout_s
        self._delivered_version = 0  # of the LatestValue; only to word the log line

    async def run(self, latest: LatestValue[Publication]) -> None:
        backoff = Backoff(self._backoff_policy)
        while True:
            problem = "session ended"
            try:
                await self._session(latest, backoff)
            except* _SESSION_ERRORS as group:
                problem = _describe_group(group)
            delay = backoff.next_delay()
            logger.warning("%s: %s; reconnecting in %.1f s", self.name, problem, delay)
            self.activity.record("sink", sink=self.name, event="disconnected", reason=problem)
            await trio.sleep(delay)

    async def _open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        url = self._url
        if url.secure:
            return await trio.open_ssl_over_tcp_stream(
                url.host, url.port, ssl_context=ssl.create_default_context(), https_compatible=True
            )
        return await trio.open_tcp_stream(url.host, url.port)

    async def _session(self, latest: LatestValue[Publication], backoff: Backoff) -> None:
        with trio.fail_after(self._connect_timeout_s):
            stream = await self._open_stream()
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self._connect_timeout_s):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        self._url.host_header,
                        self._url.resource,
                    )
                peer = _JsonRpcPeer(ws, self.name, self._call_timeout_s)
                nursery.start_soon(peer.read_messages)
                await self._serve(peer, latest, backoff)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(
        self, peer: _JsonRpcPeer, latest: LatestValue[Publication], backoff: Backoff
    ) -> None:
        hello = await peer.call("API.Hello")
        charger = hello.get("charger_info")
        logger.info(
            "%s: connected (RpcApi %s, charger %s)",
            self.name,
            hello.get("api_version", "?"),
            " ".join(str(charger.get(key)) for key in ("vendor", "model") if charger.get(key))
            if isinstance(charger, dict)
            else "?",
        )
        if hello.get("authentication_required") is True:
            logger.warning(
                "%s: the server requires authentication, which the bridge does not support; "
                "its calls may be refused",
                self.name,
            )
        evse_indices = self.output.evse_indices or await self._discover_evses(peer)
        backoff.connected()
        self.activity.record("sink", sink=self.name, event="connected")
        await self._deliver(peer, latest, evse_indices)

    async def _discover_evses(self, peer: _JsonRpcPeer) -> tuple[int, ...]:
        result = await peer.call("ChargePoint.GetEVSEInfos")
        error = result.get("error")
        if error != NO_ERROR:
            raise RpcSessionError(f"ChargePoint.GetEVSEInfos answered {error}")
        infos = result.get("infos")
        indices = sorted(
            {
                info["index"]
                for info in (infos if isinstance(infos, list) else [])
                if isinstance(info, dict)
                and isinstance(info.get("index"), int)
                and not isinstance(info.get("index"), bool)
            }
        )
        if not indices:
            raise RpcSessionError(f"ChargePoint.GetEVSEInfos listed no EVSE index: {infos!r}")
        logger.info("%s: EVSEs found: %s", self.name, ", ".join(map(str, indices)))
        return tuple(indices)

    async def _deliver(
        self,
        peer: _JsonRpcPeer,
        latest: LatestValue[Publication],
        evse_indices: tuple[int, ...],
    ) -> None:
        retry = Backoff(self._backoff_policy)
        seen_version = 0  # the limit in force first: a (re)connect re-sends it
        pending: tuple[int, Publication] | None = None
        while True:
            if pending is None:
                pending = await latest.wait_newer(seen_version)
            version, publication = pending
            problems = await self._apply(
                peer, publication, evse_indices, again=version == self._delivered_version
            )
            record_delivery(
                self.activity, self.name, version, "; ".join(problems) if problems else None
            )
            if not problems:
                seen_version, pending = version, None
                self._delivered_version = version
                retry.reset()
                continue
            delay = retry.next_delay()
            logger.warning(
                "%s: limit for state %s (%s) not applied: %s; sending again in %.1f s",
                self.name,
                publication.state,
                publication.summary(),
                "; ".join(problems),
                delay,
            )
            with trio.move_on_after(delay):
                # A newer limit replaces the one being retried.
                pending = await latest.wait_newer(version)

    async def _apply(
        self,
        peer: _JsonRpcPeer,
        publication: Publication,
        evse_indices: tuple[int, ...],
        *,
        again: bool,
    ) -> list[str]:
        powers = evse_powers(
            publication.limit_W,
            evse_indices,
            split=self.output.split,
            unlimited_W=self.unlimited_W,
        )
        if any(not math.isfinite(power) or power < 0 for _, power in powers):
            logger.error(
                "%s: NOT sending invalid powers %r for state %s (a bridge bug)",
                self.name,
                powers,
                publication.state,
            )
            return []
        problems: list[str] = []
        for evse_index, max_power in powers:
            try:
                result = await peer.call(
                    "EVSE.SetDCChargingPower", {"evse_index": evse_index, "max_power": max_power}
                )
            except RpcErrorResponse as exc:
                problems.append(f"EVSE {evse_index}: {exc}")
                continue
            error = result.get("error")
            if error != NO_ERROR:
                problems.append(f"EVSE {evse_index}: {error}")
        if not problems:
            logger.info(
                "%s: %s limits for state %s (%s): %s",
                self.name,
                "re-sent" if again else "sent",
                publication.state,
                publication.summary(),
                ", ".join(f"EVSE {index} max_power {power:g} W" for index, power in powers),
            )
        return problems
