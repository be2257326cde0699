"""Hand-offs from simulator state to the asyncio gRPC handlers that stream it out.

Producers (EG timers, control commands, other RPC handlers) run as Trio tasks or asyncio
callbacks; trio-asyncio runs both on one thread inside one Trio run. Consumers are grpclib
handlers, so they wait on asyncio futures; producers only ever resolve those futures
(`set_result` schedules the wake-up on the trio-asyncio loop, which is safe from either side).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class AioWakeup:
    """Wakes every asyncio waiter once per fire(); waiters re-check their condition."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        try:
            await future
        finally:
            if future in self._futures:
                self._futures.remove(future)

    def fire(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)


class FreezeGate:
    """While frozen, handlers stop answering (like a SIGSTOPped sidecar) until thawed."""

    def __init__(self) -> None:
        self.frozen = False
        self._thawed = AioWakeup()

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        self._thawed.fire()

    async def pass_through(self) -> None:
        while self.frozen:
            await self._thawed.wait()


class _Receiver(Generic[_T]):
    __slots__ = ("future", "zombie")

    def __init__(self, future: asyncio.Future[_T]) -> None:
        self.future = future
        self.zombie = False


class RendezvousQueue(Generic[_T]):
    """The sidecar's unbuffered Go channel of use-case events, with its quirks.

    - An event nobody is waiting for stays queued until a subscriber reads (upstream each
      event is a goroutine blocked on the send), so nothing is dropped while no client listens.
    - Waiting subscribers take events in turn, so two subscribers split the events.
    - A subscriber whose stream broke while it waited keeps its place (the Go handler only
      notices the broken stream on its next Send): the next event goes to it and is lost,
      reported through on_lost. `lose_after_break=False` turns that off.
    """

    def __init__(
        self,
        on_lost: Callable[[_T], None],
        *,
        lose_after_break: bool = True,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._pending: deque[_T] = deque()
        self._receivers: deque[_Receiver[_T]] = deque()
        self._on_lost = on_lost
        self._on_change = on_change  # the set of waiting subscribers changed
        self.lose_after_break = lose_after_break

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def waiting_count(self) -> int:
        return sum(1 for receiver in self._receivers if not receiver.zombie)

    def put(self, item: _T) -> None:
        while self._receivers:
            receiver = self._receivers.popleft()
            if receiver.zombie:
                self._on_lost(item)
                return
            if not receiver.future.done():
                receiver.future.set_result(item)
                self._on_change()
                return
        self._pending.append(item)

    async def get(self) -> _T:
        if self._pending:
            return self._pending.popleft()
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        receiver = _Receiver(future)
        self._receivers.append(receiver)
        self._on_change()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Handed over in the same instant the stream broke: in flight, lost.
                self._on_lost(future.result())
            elif self.lose_after_break:
                receiver.zombie = True
            elif receiver in self._receivers:
                self._receivers.remove(receiver)
            self._on_change()
            raise


class BoundedBuffer(Generic[_T]):
    """One discovery subscriber's buffer: at most `limit` queued items, extras dropped."""

    def __init__(self, limit: int, on_dropped: Callable[[_T], None]) -> None:
        self._items: deque[_T] = deque()
        self._limit = limit
        self._on_dropped = on_dropped
        self._wakeup = AioWakeup()

    def offer(self, item: _T) -> None:
        if len(self._items) >= self._limit:
            self._on_dropped(item)
            return
        self._items.append(item)
        self._wakeup.fire()

    async def get(self) -> _T:
        while not self._items:
            await self._wakeup.wait()
        return self._items.popleft()
