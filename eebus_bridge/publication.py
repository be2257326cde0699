"""What the bridge hands to its outputs, and the latest-value cell that carries it.

Sinks never queue limits: a sink that is slow or disconnected skips straight to the newest
publication when it gets going again (design.md, "latest-value semantics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs
import trio

T = TypeVar("T")


@attrs.frozen
class Publication:
    """One limit publication, already translated for EVerest.

    limit_W is the watt value in force now (None = unlimited), end_time the wall-clock end of a
    timed limit (None = no end), external_limits the exact ExternalLimits object EVerest gets.
    """

    time: datetime
    state: str
    limit_W: float | None
    end_time: datetime | None
    external_limits: dict[str, Any]

    def summary(self) -> str:
        """For log lines: '4200 W', '100 W until 2026-05-07T11:02:03+00:00' or 'unlimited'."""
        if self.limit_W is None:
            return "unlimited"
        until = (
            "" if self.end_time is None else f" until {self.end_time.isoformat(timespec='seconds')}"
        )
        return f"{self.limit_W:g} W{until}"


class LatestValue(Generic[T]):
    """A cell holding the newest value plus a version counter; readers wait for a newer one.

    Writers never block. Each reader remembers the version it last handled and asks for anything
    newer; values set in between are skipped, which is exactly what a limit sink wants.

    A reader that hands values to a thread of its own (the jsonl sink) can instead watch the
    cell (`watching`): its callback is called inside `set`, so the hand-over does not wait until
    the setter's work is done and the reader's task is scheduled. A watcher must only hand over
    (no I/O, no raising, a wait only if short and bounded: the jsonl sink waits up to 2 ms for
    its thread's line): it runs on the setter's stack, in the middle of the engine's decisions.
    """

    def __init__(self) -> None:
        self._value: T | None = None
        self._version = 0
        self._changed = trio.Event()
        self._watchers: list[Callable[[int, T], None]] = []

    @property
    def version(self) -> int:
        return self._version

    def get(self) -> tuple[int, T | None]:
        return self._version, self._value

    def set(self, value: T) -> None:
        self._value = value
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()
        for watcher in self._watchers:
            watcher(self._version, value)

    @contextmanager
    def watching(self, watcher: Callable[[int, T], None]) -> Iterator[None]:
        """Call watcher(version, value) for the current value (if any) now and for every later
        `set` while the block runs (see the class docstring)."""
        if self._value is not None:
            watcher(self._version, self._value)
        self._watchers = [*self._watchers, watcher]
        try:
            yield
        finally:
            self._watchers = [w for w in self._watchers if w is not watcher]

    async def wait_newer(self, seen_version: int) -> tuple[int, T]:
        """Return (version, value) of the first value newer than seen_version.

        `wait_newer(0)` returns the current value at once if there is one: a reader that
        starts (or reconnects) with 0 delivers the value in force first, then each newer one.
        """
        while self._version <= seen_version or self._value is None:
            await self._changed.wait()
        return self._version, self._value
