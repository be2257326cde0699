"""Small helpers shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll a condition outside our control (a file, another process) until it holds."""
    with trio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110 - external state has no event to wait on
            await trio.sleep(0.01)
