"""The asyncio island: trio-asyncio's event loop, stepping its ready callbacks in batches.

grpclib (and grpcio's asyncio API, the optional transport) is asyncio-only, so the bridge runs
one asyncio event loop inside Trio (trio-asyncio; sidecar_client.py and its grpc_transport.py
are the only modules that use it). grpc.aio runs on it unchanged: its C core wakes the loop
through a socket the loop watches (`add_reader`, a Trio task in trio-asyncio). Every process
of ours that talks gRPC opens that loop with `open_island()`: the bridge, `discover`, the
EVerest module and the HEMS simulator.

Why not `trio_asyncio.open_loop()` as it comes: its loop task runs *one* asyncio callback per
Trio step. Each step is a receive from a Trio memory channel and, whenever an asyncio timer is
pending (every grpclib call has a deadline timer), a fresh cancel scope with that deadline; a
single unary call needs a dozen callbacks. Measured with tools/bench_runtime.py (limit writes,
2 vCPUs): that stepping was the largest single cost of the bridge's event path.

`open_island()` keeps trio-asyncio's loop and its stepping function, and after each step runs
the callbacks that are already queued at that moment (at most that many, the way asyncio's
own loop runs in one iteration the callbacks that were ready when it began) before yielding
to Trio again. So asyncio's ordering is kept (same queue, same order, timers checked before
each callback as before), other Trio tasks still run between batches, and a callback that keeps
scheduling more cannot starve them: what it schedules waits for the next batch.

Second, cancelled timers. Each grpclib call arms a timer for its deadline (rpc_timeout_s) and
cancels it when the answer comes; trio-asyncio leaves the cancelled timer in its heap and wakes
up at its time only to throw it away: one useless Trio step per RPC, five seconds later. Before
each step the island drops cancelled timers from the head of the heap, as asyncio's own loop
does in every iteration. Measured: a third fewer loop steps and ~10 % less CPU per EG write.

Third, callback checks. trio-asyncio's `call_soon`, `call_later` and `call_at` check every
callback (`_check_callback`: is it a coroutine or a coroutine function, is it callable) before
queueing it; asyncio's own loop does that only in debug mode. A unary call queues three to
four callbacks (task wake-ups and steps, the coalescing flush, the deadline timer), and the
checks (two `inspect` lookups each) had 3.3-3.5 % of the Trio thread's samples in a profile of
tools/bench_runtime.py; the bridge's CPU per EG write went down 3-4 % (README "Performance").
The island's loop checks them as asyncio does: in debug mode
(`loop.set_debug(True)`, PYTHONASYNCIODEBUG) only.

This relies on private parts of trio-asyncio (`_main_loop_one(no_wait)`, the `_q_recv` queue,
the `_timers` heap, `_queue_handle` and `_check_callback`, the same in 0.15 and 0.16, the tested
range in pyproject.toml). If a trio-asyncio release changes them, the island logs that at DEBUG
and runs as trio-asyncio comes (slower, still correct); tests/test_island.py fails on that
release, so nobody upgrades past it unnoticed.
"""

from __future__ import annotations

# trio_asyncio before grpclib anywhere (see sidecar_client.py).
import trio_asyncio  # isort: skip

import asyncio
import heapq
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

log = logging.getLogger(__name__)

_STEP = "_main_loop_one"


@asynccontextmanager
async def open_island() -> AsyncIterator[Any]:
    """`trio_asyncio.open_loop()` with batched stepping (module docstring); yields the loop."""
    async with trio_asyncio.open_loop() as loop:
        batch_ready_callbacks(loop)
        check_callbacks_in_debug_only(loop)
        yield loop


def batch_ready_callbacks(loop: Any) -> bool:
    """Make a running trio-asyncio loop run its queued callbacks in batches; False (and the
    loop left as it was) when this trio-asyncio does not have the expected stepping method."""
    step_one: Callable[..., Awaitable[None]] | None = getattr(loop, _STEP, None)
    queue = getattr(loop, "_q_recv", None)
    timers = getattr(loop, "_timers", None)
    if getattr(step_one, "_batched", False):
        return True
    if (
        step_one is None
        or not inspect.iscoroutinefunction(step_one)
        or "no_wait" not in inspect.signature(step_one).parameters
        or not isinstance(queue, trio.MemoryReceiveChannel)
        or not isinstance(timers, list)
    ):
        log.debug("trio-asyncio %s: asyncio callbacks run one per Trio step", _version())
        return False

    async def step(no_wait: bool = False) -> None:
        # Cancelled timers at the head of the heap would only wake the loop (docstring).
        while timers and timers[0].cancelled():
            heapq.heappop(timers)
        # One callback the way trio-asyncio does it (waiting for it unless no_wait) ...
        await step_one(no_wait)
        # ... then those queued by now, without a Trio checkpoint in between. An empty queue
        # raises WouldBlock (trio-asyncio's no_wait contract): the batch is done. A stop()
        # raises TrioAsyncioExit out of here exactly as it does out of the single step.
        for _ in range(queue.statistics().current_buffer_used):
            try:
                await step_one(True)
            except trio.WouldBlock:
                return

    step._batched = True  # type: ignore[attr-defined]
    setattr(loop, _STEP, step)
    return True


def check_callbacks_in_debug_only(loop: Any) -> bool:
    """Make a trio-asyncio loop check the callbacks it is given only in debug mode, as asyncio
    does (module docstring); False (and the loop left as it was) when this trio-asyncio does
    not queue its handles the expected way."""
    queue_handle: Callable[[asyncio.Handle], asyncio.Handle] | None = getattr(
        loop, "_queue_handle", None
    )
    if getattr(loop.call_soon, "_debug_checks_only", False):
        return True
    if queue_handle is None or not hasattr(loop, "_check_callback"):
        log.debug("trio-asyncio %s: every callback is checked", _version())
        return False

    # The same as trio-asyncio's three methods, with the check under `if loop.get_debug()`.
    def check(callback: Callable[..., object], method: str) -> None:
        if loop.get_debug():
            loop._check_callback(callback, method)

    def call_soon(callback: Callable[..., object], *args: Any, **context: Any) -> asyncio.Handle:
        check(callback, "call_soon")
        return queue_handle(asyncio.Handle(callback, args, loop, **context))

    def call_at(
        when: float, callback: Callable[..., object], *args: Any, **context: Any
    ) -> asyncio.TimerHandle:
        check(callback, "call_at")
        handle = asyncio.TimerHandle(when, callback, args, loop, **context)
        queue_handle(handle)
        return handle

    def call_later(
        delay: float, callback: Callable[..., object], *args: Any, **context: Any
    ) -> asyncio.TimerHandle:
        check(callback, "call_later")
        assert delay >= 0, delay  # as trio-asyncio has it
        handle = asyncio.TimerHandle(delay + loop.time(), callback, args, loop, **context)
        queue_handle(handle)
        return handle

    methods: tuple[Callable[..., asyncio.Handle], ...] = (call_soon, call_at, call_later)
    for method in methods:
        method._debug_checks_only = True  # type: ignore[attr-defined]
        setattr(loop, method.__name__, method)
    return True


def _version() -> str:
    return str(getattr(trio_asyncio, "__version__", "?"))
