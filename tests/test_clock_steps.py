"""Wall-clock steps (issue 13.3): the current limits are re-published with timestamps from the
corrected clock (the same monotonic end), the step is logged once, and nothing is published
without a step.

The lpc task runs for real (LpcRunner + engine) on a MockClock that only moves when the test
says so; the wall clock is injected as "monotonic time + a base + a step the test changes", and
the clock-change notification is a channel the test feeds (the kernel's is tested on its own).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from eebus_bridge.clock_steps import KernelClockChanges, PeriodicClockCheck
from eebus_bridge.lpc import Heartbeat, LimitUpdated, SidecarLimit
from eebus_bridge.lpc_runner import LpcRunner
from eebus_bridge.publication import Publication
from tests._bridge_fixtures import EG_SKI, RecordingPublications, make_config

BASE = datetime(2026, 5, 7, 10, 0, 0, tzinfo=UTC)
YEAR = timedelta(days=365)


@attrs.define
class SteppableWallClock:
    step: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return BASE + timedelta(seconds=trio.current_time()) + self.step


class ManualClockChanges:
    """Stands in for the kernel's notification: the test says when the clock may have changed."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[None](math.inf)
        self.closed = False

    async def wait(self) -> None:
        await self.receive.receive()

    def close(self) -> None:
        self.closed = True


@attrs.define
class Harness:
    runner: LpcRunner
    publications: RecordingPublications
    wall: SteppableWallClock
    changes: ManualClockChanges

    async def clock_changed(self) -> None:
        self.changes.send.send_nowait(None)
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def lpc_task(tmp_path: Path) -> AsyncIterator[Harness]:
    publications = RecordingPublications()
    wall = SteppableWallClock()
    changes = ManualClockChanges()
    runner = LpcRunner(
        make_config(
            tmp_path,
            grpc_port=50051,
            timing={"init_timeout_s": 36000.0, "heartbeat_timeout_s": 36000.0},
        ),
        publications,
        wall_clock=wall,
        clock_changes=lambda: changes,
    )
    runner.start(None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await trio.testing.wait_all_tasks_blocked()
        yield Harness(runner, publications, wall, changes)
        nursery.cancel_scope.cancel()
    assert changes.closed


def _wall(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


async def _limited_for_an_hour(h: Harness) -> Publication:
    await h.runner.send(Heartbeat(ski=EG_SKI))
    limit = SidecarLimit(value=100.0, is_active=True, duration_s=3600.0)
    await h.runner.send(LimitUpdated(ski=EG_SKI, limit=limit))
    await trio.testing.wait_all_tasks_blocked()
    assert h.publications.states == ["Init", "Limited"]
    return h.publications.history[-1]


@pytest.mark.parametrize(
    "step", [timedelta(minutes=5), -timedelta(minutes=5), 3 * YEAR, -YEAR], ids=str
)
async def test_step_in_limited_republishes_with_the_same_monotonic_end(
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    step: timedelta,
) -> None:
    async with lpc_task(tmp_path) as h:
        mock_clock.jump(10.0)
        limited = await _limited_for_an_hour(h)
        assert limited.end_time == _wall(10.0 + 3600.0)
        mock_clock.jump(20.0)

        h.wall.step = step
        with caplog.at_level(logging.INFO, logger="eebus_bridge.lpc"):
            await h.clock_changed()

        again = h.publications.history[-1]
        assert h.publications.states == ["Init", "Limited", "Limited"]
        assert again.limit_W == 100.0
        assert again.time == _wall(30.0) + step
        # Same monotonic end (3580 s from now), told in the corrected clock.
        assert again.end_time == _wall(10.0 + 3600.0) + step
        schedule = again.external_limits["schedule_import"]
        assert [entry["timestamp"][:19] for entry in schedule] == [
            f"{_wall(30.0) + step:%Y-%m-%dT%H:%M:%S}",
            f"{_wall(3610.0) + step:%Y-%m-%dT%H:%M:%S}",
        ]
        steps = [r for r in caplog.records if "wall clock stepped" in r.getMessage()]
        assert len(steps) == 1
        assert ("forward" if step > timedelta(0) else "back") in steps[0].getMessage()

        # Logged and published once: the next notifications find nothing new.
        await h.clock_changed()
        await h.clock_changed()
        assert len(h.publications.history) == 3
        assert len([r for r in caplog.records if "wall clock stepped" in r.getMessage()]) == 1

        # The engine's own deadline still ends the limit on time, on the corrected clock.
        mock_clock.jump(3580.0)
        await trio.testing.wait_all_tasks_blocked()
        assert h.publications.states[-1] == "Unlimited/controlled"
        assert h.publications.history[-1].time == _wall(3610.0) + step


@pytest.mark.parametrize("step", [timedelta(hours=2), -timedelta(seconds=30)], ids=str)
async def test_step_in_init_republishes_the_failsafe_limit(
    tmp_path: Path, mock_clock: trio.testing.MockClock, step: timedelta
) -> None:
    async with lpc_task(tmp_path) as h:
        assert h.publications.states == ["Init"]
        mock_clock.jump(5.0)
        h.wall.step = step
        await h.clock_changed()

        assert h.publications.states == ["Init", "Init"]
        again = h.publications.history[-1]
        assert again.limit_W == h.publications.history[0].limit_W
        assert again.end_time is None
        assert again.time == _wall(5.0) + step


async def test_no_publication_without_a_step(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with lpc_task(tmp_path) as h:
        await _limited_for_an_hour(h)
        for drift_s in (0.0, 1.0, 2.0, -2.0, 0.5):  # up to 2 s is not a step
            mock_clock.jump(7.0)
            h.wall.step = timedelta(seconds=drift_s)
            await h.clock_changed()
        assert h.publications.states == ["Init", "Limited"]


async def test_step_right_at_the_limit_end_leaves_it_to_the_engine(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with lpc_task(tmp_path) as h:
        await _limited_for_an_hour(h)
        # The clock is stepped exactly when the limit ends: one publication (the engine's
        # Unlimited/controlled), none for an expired Limited.
        mock_clock.jump(3600.0)
        h.wall.step = timedelta(minutes=10)
        await h.clock_changed()
        assert h.publications.states == ["Init", "Limited", "Unlimited/controlled"]
        assert h.publications.history[-1].time == _wall(3600.0) + timedelta(minutes=10)


async def test_kernel_notification_wakes_on_its_timer_and_rearms() -> None:
    # A real CLOCK_REALTIME timerfd with a 50 ms horizon: wait() returns when it expires and
    # re-arms, so a second wait() returns again. (Setting the real clock to see ECANCELED
    # would disturb the whole machine; ECANCELED takes the same path.)
    changes = KernelClockChanges.open(horizon_s=0.05)
    assert changes is not None, "this Linux test machine has timerfd"
    try:
        with trio.fail_after(10):
            await changes.wait()
            await changes.wait()
    finally:
        changes.close()


async def test_fallback_check_waits_its_interval(autojump_clock: trio.testing.MockClock) -> None:
    check = PeriodicClockCheck(10.0)
    began = trio.current_time()
    await check.wait()
    assert trio.current_time() - began == pytest.approx(10.0)
