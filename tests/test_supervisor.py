"""The supervisor's restart backoff and failure descriptions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from eebus_bridge.runtime import Bridge, describe_failure, restart_backoff
from eebus_bridge.sidecar_client import SidecarUnreachable
from eebus_bridge.sidecar_process import SidecarExited
from tests._bridge_fixtures import make_config
from tools.hems_simulator import free_tcp_port


@pytest.mark.parametrize("seed", range(20))
async def test_backoff_doubles_to_a_cap_with_jitter_and_resets_after_healthy_running(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    # Seeded: every draw of the jitter is checked, and a failure names the seed that caused it.
    backoff = restart_backoff(5.0, rng=random.Random(seed))

    async def delay(healthy_for: float) -> float:
        # As the supervisor does: the group starts, runs for a while, fails.
        backoff.connected()
        await trio.sleep(healthy_for)
        return backoff.next_delay()

    delays = [await delay(healthy_for=1.0) for _ in range(6)]
    bases = [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    for value, base in zip(delays, bases, strict=True):
        assert 0.8 * base <= value <= min(1.2 * base, 60.0)
    # Jittered, not lock-step: below the cap no delay is its exact base. (At the cap two draws
    # may both be clamped to 60.0, so they are not compared with each other.)
    assert all(value != base for value, base in zip(delays[:4], bases[:4], strict=True))
    # A group that ran for 60 s was healthy: the next restart starts small again.
    assert 4.0 <= await delay(healthy_for=60.0) <= 6.0
    assert 8.0 <= await delay(healthy_for=1.0) <= 12.0


@pytest.mark.parametrize("seed", range(5))
def test_configured_cap_bounds_every_delay(seed: int) -> None:
    # [sidecar] restart_delay_max_s / [eebus] reconnect_delay_max_s: doubling stops there
    # (a cap below the initial delay is lifted to it).
    backoff = restart_backoff(0.2, 0.5, rng=random.Random(seed))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.16 <= d <= 0.6 for d in delays)
    assert all(d >= 0.4 for d in delays[2:])
    lifted = restart_backoff(5.0, 1.0, rng=random.Random(seed))
    assert 4.0 <= lifted.next_delay() <= 6.0


@pytest.mark.parametrize("seed", range(5))
def test_jitter_never_takes_a_delay_past_the_cap(seed: int) -> None:
    # Seen in the soak: the sinks' 30 s cap plus jitter gave delays of up to 36 s.
    backoff = restart_backoff(5.0, 30.0, rng=random.Random(seed))
    delays = [backoff.next_delay() for _ in range(200)]
    assert max(delays) <= 30.0
    assert min(delays[10:]) >= 0.8 * 30.0  # at the cap, jitter only shortens


def test_two_backoffs_do_not_reconnect_in_lockstep() -> None:
    first, second = restart_backoff(5.0), restart_backoff(5.0)
    assert [first.next_delay() for _ in range(3)] != [second.next_delay() for _ in range(3)]


def test_failure_description_names_every_leaf() -> None:
    group = ExceptionGroup(
        "group",
        [SidecarExited("sidecar exited with status -9"), SidecarUnreachable("stream broke")],
    )
    assert describe_failure(group) == (
        "SidecarExited: sidecar exited with status -9; SidecarUnreachable: stream broke"
    )


def test_expected_failures_are_told_apart_from_bugs() -> None:
    from eebus_bridge.runtime import _is_expected

    assert _is_expected(ExceptionGroup("g", [SidecarExited("x"), SidecarUnreachable("y")]))
    assert not _is_expected(ExceptionGroup("g", [SidecarExited("x"), KeyError("bug")]))


async def test_a_connection_failing_while_the_bridge_is_cancelled_does_not_escape(
    tmp_path: Path,
) -> None:
    """Seen in CI: at shutdown the sidecar is stopped while a read is in flight, so the link
    fails with SidecarUnreachable beside the Cancelled of its other tasks. That mixed group
    escaped the supervisor, and a clean SIGTERM ended with an error."""
    config = make_config(tmp_path, grpc_port=free_tcp_port())
    bridge = Bridge(config)
    link_started = trio.Event()

    async def link_that_breaks_when_stopped(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def read_in_flight() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise SidecarUnreachable("ConsumptionLimit: StreamTerminatedError Connection lost")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_in_flight)
            nursery.start_soon(trio.sleep_forever)
            task_status.started()
            link_started.set()

    bridge.link.run = link_that_breaks_when_stopped  # type: ignore[method-assign]
    with trio.move_on_after(10) as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await link_started.wait()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught  # ended by the cancel, not by the time-out
