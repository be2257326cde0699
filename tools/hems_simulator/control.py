"""Live control from outside the process: JSON lines over TCP on 127.0.0.1.

One JSON object per line in, one per line out: {"action": "send_limit", "value": 100,
"active": true, "duration_s": 60} -> {"ok": true, "msg_counter": 7}; errors are
{"ok": false, "error": "..."}. The actions are HemsSimulator.apply_action's (README.md).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .simulator import HemsSimulator

_MAX_LINE = 64 * 1024


async def serve_control(
    sim: HemsSimulator,
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control interface until cancelled; started value: the listeners."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await _serve_connection(sim, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to answer

    await trio.serve_tcp(handle, port, host=host, task_status=task_status)


async def _serve_connection(sim: HemsSimulator, stream: trio.SocketStream) -> None:
    pending = b""
    while True:
        data = await stream.receive_some(_MAX_LINE)
        if not data:
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                await stream.send_all(_encode(_answer(sim, line)))
        if len(pending) > _MAX_LINE:
            await stream.send_all(_encode({"ok": False, "error": "line too long"}))
            return


def _answer(sim: HemsSimulator, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "expected a JSON object"}
    answer = sim.apply_action(request)
    sim.log.debug(f"Control {request.get('action')!r}: {'ok' if answer['ok'] else answer['error']}")
    return answer


def _encode(answer: dict[str, Any]) -> bytes:
    return (json.dumps(answer, allow_nan=False) + "\n").encode()


class ControlClient:
    """Client of the control interface; one short TCP connection per request."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, timeout: float = 5.0) -> None:
        self.port = port
        self.host = host
        self.timeout = timeout

    async def request(self, action: str, **params: Any) -> dict[str, Any]:
        """Send {"action": action, **params}; return the decoded answer (ok or not)."""
        return await self.send({"action": action, **params})

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        with trio.fail_after(self.timeout):
            stream = await trio.open_tcp_stream(self.host, self.port)
            async with stream:
                await stream.send_all((json.dumps(message) + "\n").encode())
                received = b""
                while b"\n" not in received:
                    chunk = await stream.receive_some(_MAX_LINE)
                    if not chunk:
                        raise ConnectionError("control interface closed the connection")
                    received += chunk
        answer: dict[str, Any] = json.loads(received.split(b"\n", 1)[0])
        return answer

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        """Like request(), but raise RuntimeError when the answer is not ok."""
        answer = await self.request(action, **params)
        if not answer.get("ok"):
            raise RuntimeError(f"control {action}: {answer.get('error')}")
        return answer
