"""Exit means exit (issue 13.7): SIGTERM ends the bridge process within 2 s, exit status 0,
whatever its threads are doing: a non-daemon thread and an executor thread stuck in a blocking
call, an atexit handler that never returns, a stderr pipe that nobody reads.

Real subprocesses (the bridge with the simulator as its managed sidecar, which ignores SIGTERM),
as in tests/test_runtime_process.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from pathlib import Path

import trio

from eebus_bridge.runtime import SHUTDOWN_BUDGET_S
from tests._util import wait_until
from tests.test_runtime_process import BridgeProcess, _alive, bridge_process

# Measured from this process: its own wake-up after the child's exit may lag a little on a
# loaded machine, so the assertion allows half a second on top of the bridge's budget.
_MEASURING_SLACK_S = 0.5

STUCK_THREADS = """
import atexit, concurrent.futures, pathlib, socket, threading, time
_a, _b = socket.socketpair()
def _stuck():
    pathlib.Path({marker!r}).write_text(str(threading.get_native_id()))
    _a.recv(1)
# A non-daemon thread blocked for good: the interpreter's exit would join it forever.
threading.Thread(target=_stuck).start()
# An executor thread blocked the same way (asyncio's default executor is such a pool).
_pool = concurrent.futures.ThreadPoolExecutor(1)
_pool.submit(_b.recv, 1)
# An exit handler that never returns.
atexit.register(time.sleep, 3600)
"""


async def _sigterm_and_wait(bridge: BridgeProcess) -> tuple[int, float]:
    began = trio.current_time()
    bridge.process.send_signal(signal.SIGTERM)
    with trio.fail_after(15):
        code = await bridge.process.wait()
    return code, trio.current_time() - began


async def test_sigterm_exits_within_2_s_with_stuck_threads_and_exit_handlers(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "stuck-thread.tid"
    async with bridge_process(tmp_path, prelude=STUCK_THREADS.format(marker=str(marker))) as bridge:
        await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
        (sidecar,) = bridge.sidecar_pids
        # The stuck thread really is there, alive in the bridge process.
        stuck_thread = f"/proc/{bridge.process.pid}/task/{marker.read_text()}"
        assert os.path.exists(stuck_thread)  # noqa: ASYNC240 - /proc, instant

        code, took = await _sigterm_and_wait(bridge)

        assert code == 0, bridge.log()
        assert took < SHUTDOWN_BUDGET_S + _MEASURING_SLACK_S, bridge.log()
        assert not _alive(sidecar)
        assert "SIGTERM received: shutting down" in bridge.log()
        assert "eebus-bridge stopped" in bridge.log()


async def test_sigterm_exits_within_2_s_while_stderr_pipe_is_full(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        async with bridge_process(
            tmp_path, output=write_end, log_level="info", ignore_sigterm=True
        ) as bridge:
            await wait_until(lambda: "Limited" in bridge.states(), limit_s=20)
            (sidecar,) = bridge.sidecar_pids
            # Fill the pipe through a second, non-blocking open of it (O_NONBLOCK on our copy
            # of write_end would change the bridge's too: they share one open file).
            filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
            try:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        os.write(filler, b"x" * 4096)
                with contextlib.suppress(BlockingIOError):  # down to the last byte
                    while True:
                        os.write(filler, b"x")
            finally:
                os.close(filler)
            flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
            assert not flags & os.O_NONBLOCK  # the bridge still writes blocking

            code, took = await _sigterm_and_wait(bridge)

            assert code == 0
            assert took < SHUTDOWN_BUDGET_S + _MEASURING_SLACK_S
            # The bridge's Trio side never got past its first log line; the deadline also
            # took the sidecar (which ignores SIGTERM) down with it.
            await wait_until(lambda: not _alive(sidecar), limit_s=5)
    finally:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):
                os.close(fd)
