"""The asyncio island (eebus_bridge/island.py): trio-asyncio's loop, stepped in batches.

What must hold: the installed trio-asyncio has the stepping method the island relies on (this
test is the alarm for an upgrade that changes it), callbacks keep asyncio's order, callbacks that
are ready together run together, Trio tasks still get their turn between batches (a callback
that keeps rescheduling itself cannot starve them), timers fire, callbacks are checked in
debug mode only (as asyncio does), and the loop closes cleanly with work still queued.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import pytest
import trio
import trio_asyncio

from eebus_bridge.island import batch_ready_callbacks, check_callbacks_in_debug_only, open_island

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("_marker", default="none")


async def test_the_installed_trio_asyncio_is_stepped_in_batches() -> None:
    async with open_island() as loop:
        assert getattr(loop._main_loop_one, "_batched", False), (
            "trio-asyncio changed _main_loop_one(no_wait): island.py runs unbatched on it"
        )
        assert batch_ready_callbacks(loop) is True  # idempotent


async def test_callbacks_keep_asyncio_order_also_those_scheduled_by_callbacks() -> None:
    order: list[str] = []

    async with open_island() as loop:

        def first(n: int) -> None:
            order.append(f"a{n}")
            loop.call_soon(order.append, f"b{n}")  # scheduled during the batch: after all a's

        done = trio.Event()
        for n in range(20):
            loop.call_soon(first, n)
        loop.call_soon(lambda: loop.call_soon(done.set))
        with trio.fail_after(5):
            await done.wait()

    assert order == [f"a{n}" for n in range(20)] + [f"b{n}" for n in range(20)]


async def test_callbacks_ready_together_run_without_trio_steps_between_them() -> None:
    spins = 0
    seen: list[int] = []

    async def spinner() -> None:
        nonlocal spins
        while True:
            spins += 1
            await trio.lowlevel.checkpoint()

    async with open_island() as loop, trio.open_nursery() as nursery:
        nursery.start_soon(spinner)
        await trio.sleep(0.01)
        done = trio.Event()
        for _ in range(50):
            loop.call_soon(lambda: seen.append(spins))
        loop.call_soon(done.set)
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()

    assert len(seen) == 50
    # Unbatched, the spinner runs between every two callbacks (50 different counts).
    assert len(set(seen)) <= 2, f"Trio ran between callbacks ready together: {sorted(set(seen))}"


async def test_a_callback_that_keeps_rescheduling_itself_does_not_starve_trio() -> None:
    runs = 0
    stop = False

    async with open_island() as loop:

        def forever() -> None:
            nonlocal runs
            runs += 1
            if not stop:  # (trio-asyncio drains its queue on exit: the chain must end)
                loop.call_soon(forever)

        loop.call_soon(forever)
        with trio.fail_after(5):
            await trio.sleep(0.05)  # a Trio task still wakes up on time
            ticks = 0
            for _ in range(100):
                await trio.lowlevel.checkpoint()
                ticks += 1
        stop = True
        assert ticks == 100
        assert runs > 100  # and the chain ran all the while


async def test_timers_fire_and_asyncio_code_runs_as_before() -> None:
    async with open_island() as loop:
        fired = trio.Event()
        loop.call_later(0.02, fired.set)

        async def work() -> int:
            await asyncio.sleep(0.01)
            return 42

        with trio.fail_after(5):
            await fired.wait()
            assert await trio_asyncio.aio_as_trio(work)() == 42


async def test_the_island_closes_with_callbacks_still_queued() -> None:
    ran: list[int] = []
    with trio.fail_after(5):
        async with open_island() as loop:
            for n in range(100):
                loop.call_soon(ran.append, n)
    assert ran == list(range(100))  # trio-asyncio drains its queue on the way out


def test_a_trio_asyncio_without_the_stepping_method_runs_unbatched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class OtherLoop:
        def _main_loop_one(self) -> None:  # not a coroutine function, no no_wait
            pass

    loop: Any = OtherLoop()
    with caplog.at_level(logging.DEBUG, logger="eebus_bridge.island"):
        assert batch_ready_callbacks(loop) is False
        assert batch_ready_callbacks(object()) is False
    assert "one per Trio step" in caplog.text
    assert not getattr(loop._main_loop_one, "_batched", False)


async def test_cancelled_timers_do_not_stay_to_wake_the_loop() -> None:
    async with open_island() as loop:
        fired: list[int] = []
        handles = [loop.call_later(30 + n, fired.append, n) for n in range(50)]
        kept = loop.call_later(0.05, fired.append, -1)
        for handle in handles:
            handle.cancel()  # as grpclib does with a call's deadline timer once it is answered
        with trio.fail_after(5):
            while not fired:  # noqa: ASYNC110 - the loop steps meanwhile
                await trio.sleep(0.01)
        assert fired == [-1]
        assert not kept.cancelled()
        # The cancelled ones were dropped when they reached the head of the heap, not 30 s on.
        assert loop._timers == []


async def test_callbacks_are_checked_in_debug_mode_only_as_asyncio_does() -> None:
    async with open_island() as loop:
        checked: list[str] = []
        real_check = loop._check_callback
        loop._check_callback = lambda callback, method: checked.append(method)
        try:
            ran: list[str] = []
            done = trio.Event()
            ctx = contextvars.copy_context()
            ctx.run(_marker.set, "from the context")
            loop.call_soon(lambda: ran.append(_marker.get()), context=ctx)
            loop.call_at(loop.time() + 0.01, ran.append, "at")
            loop.call_later(0.02, ran.append, "later")
            loop.call_later(0.03, done.set)
            with trio.fail_after(5):
                await done.wait()
            assert ran == ["from the context", "at", "later"]
            assert checked == []  # not in normal mode: the hot path (asyncio checks in debug only)

            loop.set_debug(True)
            loop.call_soon(ran.append, "x")
            loop.call_at(loop.time(), ran.append, "y")
            loop.call_later(0, ran.append, "z")
            assert [m for m in checked if m != "call_soon_threadsafe"] == [
                "call_soon",
                "call_at",
                "call_later",
            ]
        finally:
            loop.set_debug(False)
            loop._check_callback = real_check

        async def coroutine() -> None:
            pass

        loop.set_debug(True)
        try:
            with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
                loop.call_soon(coroutine)
        finally:
            loop.set_debug(False)
        assert check_callbacks_in_debug_only(loop) is True  # idempotent


def test_a_trio_asyncio_without_queue_handle_keeps_its_own_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class OtherLoop:
        def call_soon(self) -> None:
            pass

    loop: Any = OtherLoop()
    original = loop.call_soon
    with caplog.at_level(logging.DEBUG, logger="eebus_bridge.island"):
        assert check_callbacks_in_debug_only(loop) is False
    assert "every callback is checked" in caplog.text
    assert loop.call_soon == original
