"""What the client did, as the simulator saw it: RPCs, approvals and produced events.

Tests read the lists in-process (and wait for a matching entry); a subprocess writes the same
entries as JSON lines (`-record FILE`, appended, flushed per line) so a test in another process
can read them while the simulator runs.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import attrs
import betterproto2
import trio

Outcome = Literal["emitted", "lost", "dropped"]


def _jsonable(value: Any) -> Any:
    """Python-format betterproto2 dicts still hold enums and non-finite floats; JSON has neither."""
    if isinstance(value, enum.Enum):
        name = value.name
        return value.value if name is None or name.startswith("~") else name
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def message_to_dict(message: betterproto2.Message) -> dict[str, Any]:
    """snake_case field names, every field present, enums by name, int64 as int."""
    raw = message.to_dict(
        output_format=betterproto2.OutputFormat.PYTHON,
        casing=betterproto2.Casing.SNAKE,
        include_default_values=True,
    )
    result: dict[str, Any] = _jsonable(raw)
    return result


@attrs.frozen
class RpcRecord:
    """One RPC the client made. `t` is the simulator clock (trio; a MockClock in tests),
    `mono` is time.monotonic() (comparable across processes), `wall` is time.time()."""

    index: int
    t: float
    mono: float
    wall: float
    method: str  # "SetConfig", "cs_lpc.ApproveOrDenyConsumptionLimit", ...
    request: dict[str, Any]
    ok: bool
    error: str | None  # the error text the client got, None when ok

    def to_json(self) -> dict[str, Any]:
        return {"kind": "rpc", **attrs.asdict(self)}


@attrs.frozen
class ApprovalRecord:
    """The fate of one EG limit write: answered by the client or rejected by the timeout."""

    index: int
    t: float
    mono: float
    wall: float
    msg_counter: int
    approve: bool
    reason: str
    auto_rejected: bool
    remote_ski: str
    limit: dict[str, Any]  # the written limit: value, is_active, duration_nanoseconds

    def to_json(self) -> dict[str, Any]:
        return {"kind": "approval", **attrs.asdict(self)}


@attrs.frozen
class EventRecord:
    """A use-case or discovery event the simulated sidecar produced, or lost on its way."""

    index: int
    t: float
    mono: float
    wall: float
    stream: Literal["usecase", "discovery"]
    name: str  # "WriteApprovalRequired", ..., or "DISCOVERED" / "REMOVED"
    remote_ski: str
    outcome: Outcome

    def to_json(self) -> dict[str, Any]:
        return {"kind": "event", **attrs.asdict(self)}


_R = TypeVar("_R", RpcRecord, ApprovalRecord, EventRecord)


class RecordBook:
    """Appends records, wakes waiters, mirrors everything to an optional JSONL file.

    Appends come from asyncio handlers and Trio tasks alike; both run inside the one Trio
    run (trio-asyncio), so a plain trio.Event is enough to wake waiters.
    """

    def __init__(self, clock: Callable[[], float], path: Path | None = None) -> None:
        self._clock = clock
        self.rpcs: list[RpcRecord] = []
        self.approvals: list[ApprovalRecord] = []
        self.events: list[EventRecord] = []
        self._changed = trio.Event()
        self._file: IO[str] | None = None
        if path is not None:
            self._file = path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _stamp(self) -> tuple[float, float, float]:
        return self._clock(), time.monotonic(), time.time()

    def add_rpc(
        self, method: str, request: betterproto2.Message, error: str | None = None
    ) -> RpcRecord:
        t, mono, wall = self._stamp()
        record = RpcRecord(
            index=len(self.rpcs),
            t=t,
            mono=mono,
            wall=wall,
            method=method,
            request=message_to_dict(request),
            ok=error is None,
            error=error,
        )
        self.rpcs.append(record)
        self._written(record.to_json())
        return record

    def add_approval(
        self,
        *,
        msg_counter: int,
        approve: bool,
        reason: str,
        auto_rejected: bool,
        remote_ski: str,
        limit: dict[str, Any],
    ) -> ApprovalRecord:
        t, mono, wall = self._stamp()
        record = ApprovalRecord(
            index=len(self.approvals),
            t=t,
            mono=mono,
            wall=wall,
            msg_counter=msg_counter,
            approve=approve,
            reason=reason,
            auto_rejected=auto_rejected,
            remote_ski=remote_ski,
            limit=limit,
        )
        self.approvals.append(record)
        self._written(record.to_json())
        return record

    def add_event(
        self,
        stream: Literal["usecase", "discovery"],
        name: str,
        remote_ski: str,
        outcome: Outcome = "emitted",
    ) -> EventRecord:
        t, mono, wall = self._stamp()
        record = EventRecord(
            index=len(self.events),
            t=t,
            mono=mono,
            wall=wall,
            stream=stream,
            name=name,
            remote_ski=remote_ski,
            outcome=outcome,
        )
        self.events.append(record)
        self._written(record.to_json())
        return record

    def _written(self, line: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(line, allow_nan=False) + "\n")
            self._file.flush()
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(
        self,
        records: list[_R],
        match: Callable[[_R], bool],
        *,
        start: int = 0,
    ) -> _R:
        """First record at index >= start that matches, waiting for new ones as needed."""
        position = start
        while True:
            while position < len(records):
                record = records[position]
                position += 1
                if match(record):
                    return record
            await self._changed.wait()
