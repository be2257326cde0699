"""Small helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll a condition outside our control (a file, another process) until it holds."""
    with trio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110 - external state has no event to wait on
            await trio.sleep(0.01)


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """Make `folder` refuse new files for as long as the block runs (also for root)."""
    folder.chmod(0o555)
    immutable = False
    if _writable(folder):  # root ignores modes
        folder.chmod(0o755)
        result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        immutable = result.returncode == 0
    if _writable(folder):
        folder.chmod(0o755)
        pytest.fail("cannot make a folder read-only here (neither chmod nor chattr +i works)")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)
