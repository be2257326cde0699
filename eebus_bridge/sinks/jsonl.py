"""The jsonl sink: one JSON line per publication, to a file or stdout.

For demos, CI suites and audits: a line holds the publication time, the LPC state and the exact
ExternalLimits object EVerest would get. Each line is flushed at once so a reader tailing the
file (or a test) sees it immediately.

Writes happen in one thread per open file (`_LineWriter`), never on the Trio thread: a slow
disk or a stdout pipe nobody drains stalls only this sink's thread, never the Trio loop. The
sink watches the publications cell (`LatestValue.watching`), so a publication is handed to the
thread inside the engine's `set`, without waiting for the sink's task to be scheduled. The line
is formatted in the thread. A thread that is stuck in a write keeps only the newest
publication waiting (latest-value semantics, like every sink): stale lines are skipped, never
queued. Deliveries and failures are reported back to the Trio thread, where they are recorded
and where a failed write leads to a reopen with backoff.

The hand-over waits for the line, briefly. A Python thread runs only while it holds the GIL,
and the Trio thread, busy with the rest of the publication, gave it up only when it next
idled: a line reached the file ~0.45 ms after it was handed over, against ~0.06 ms to format
and write it (tools/trace_event_path.py). So when the writer is idle, `offer` waits until the
line is written, at most HAND_OVER_WAIT_S: the thread writes at once. A write that takes longer
goes on in the thread while the bridge carries on, and while the thread is still busy with a
line, offers do not wait at all. A stuck disk or a pipe nobody reads therefore costs the loop
HAND_OVER_WAIT_S once, not per line. (Writing on the Trio thread itself would be faster still,
but a blocked write would stall the loop without bound; README "Performance".)

How it waits is measured too, because the thread wake-ups were most of the hand-over's cost:
waking a thread that sleeps on another CPU costs ~0.1 ms, more on a virtual machine, whose idle
CPU must first be woken from its halt. Two things avoid them:

- The writer thread follows the Trio thread's CPU (Linux): each hand-over asks which CPU the
  Trio thread is on (`sched_getcpu`) and, when that changed since the last one, confines the
  writer to it (`sched_setaffinity` on the writer's thread id). Nothing is lost by that: the
  Trio thread waits for the line anyway.
- The Trio thread does not sleep while it waits: it yields its CPU (`sched_yield`, which also
  releases the GIL) until the line is written. The writer runs in its place on the same CPU,
  and the Trio thread goes on the moment the writer is back in its wait, without being woken.
  A write that blocks costs at most HAND_OVER_WAIT_S of such yielding, once (above).

Measured (tools/trace_event_path.py, alternating runs): answer received -> line written
0.40-0.43 -> 0.31-0.32 ms; answer received -> input applied (the Trio thread free again)
0.67-0.73 -> 0.55-0.57 ms. Where the CPU cannot be followed (not Linux, no sched_getcpu, a refused
affinity: logged once at DEBUG, then no more tries), the writer keeps the process's CPUs and
the hand-over still works, only without the first gain.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import trio

from eebus_bridge.activity import ActivityFeed, record_delivery
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import JsonlOutput
from eebus_bridge.lpc import format_timestamp
from eebus_bridge.publication import LatestValue, Publication

logger = logging.getLogger(__name__)

STOP_WAIT_S = 0.5  # how long a stopping sink waits for its writer thread's last line
HAND_OVER_WAIT_S = 0.002  # how long a publication waits for an idle writer's line (docstring)


def _cpu_probe() -> Callable[[], int] | None:
    """libc's sched_getcpu (the CPU the calling thread runs on), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        getcpu = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    getcpu.argtypes = []
    getcpu.restype = ctypes.c_int
    return getcpu


CURRENT_CPU = _cpu_probe()


def jsonl_line(publication: Publication) -> str:
    """The line written for one publication, without the newline."""
    record: dict[str, Any] = {
        "time": format_timestamp(publication.time),
        "state": publication.state,
        "external_limits": publication.external_limits,
    }
    return json.dumps(record, allow_nan=False)


class JsonlSink:
    def __init__(
        self,
        output: JsonlOutput,
        *,
        backoff: BackoffPolicy | None = None,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.output = output
        self.activity = activity if activity is not None else ActivityFeed()
        self.name = f"jsonl[{output.path if output.path is not None else 'stdout'}]"
        self._backoff_policy = backoff

    async def run(self, latest: LatestValue[Publication]) -> None:
        backoff = Backoff(self._backoff_policy)
        while True:
            try:
                stream = await trio.to_thread.run_sync(self._open)
                backoff.connected()
                self.activity.record("sink", sink=self.name, event="connected")
                writer = _LineWriter(stream, self.name, self._delivered)
                try:
                    # The current publication first (a (re)opened file starts with the limits
                    # in force), then each newer one.
                    with latest.watching(writer.offer):
                        await writer.failed()
                finally:
                    await writer.stop()
            except OSError as exc:
                # A full disk, a vanished directory or a closed stdout: keep trying, the rest
                # of the bridge must not stop over its record of limits.
                delay = backoff.next_delay()
                logger.error("%s: cannot write: %s; retrying in %.1f s", self.name, exc, delay)
                self.activity.record("sink", sink=self.name, event="disconnected", reason=str(exc))
                await trio.sleep(delay)

    def _delivered(self, version: int, error: str | None) -> None:
        record_delivery(self.activity, self.name, version, error)

    def _open(self) -> TextIO:
        if self.output.path is None:
            return sys.stdout
        return self.output.path.open("a", encoding="utf-8")


def _write_and_flush(stream: TextIO, line: str) -> None:
    stream.write(line)
    stream.flush()


class _LineWriter:
    """The thread that writes one open stream's lines (module docstring).

    Trio side: `offer` (a watcher of the publications cell; waits up to HAND_OVER_WAIT_S for
    an idle thread to write the line, yielding its CPU to it), `failed` (waits for the first
    failed write and raises it), `stop`. Thread side: takes the newest offered publication,
    formats and writes it, reports the outcome to the Trio thread (`delivered(version, error)`
    is called there), and on stop writes what is still offered, closes the stream it owns and
    ends.
    """

    def __init__(
        self, stream: TextIO, name: str, delivered: Callable[[int, str | None], None]
    ) -> None:
        self._stream = stream
        self._owns_stream = stream is not sys.stdout  # now: a test runner may swap stdout later
        self._name = name
        self._delivered = delivered
        self._token = trio.lowlevel.current_trio_token()
        self._wake = threading.Condition()
        self._offered: tuple[int, Publication] | None = None  # guarded by _wake
        self._stopping = False  # guarded by _wake
        self._idle = False  # guarded by _wake: the thread waits for a line to write
        self._done = 0  # the version last written (or given up on); offer polls it
        self._failure: OSError | None = None
        self._failed = trio.Event()
        self._thread = threading.Thread(target=self._work, name=f"{name} writer", daemon=True)
        self._thread.start()
        self._writer_tid = self._thread.native_id or 0  # known once started (Linux)
        # None: the writer keeps the process's CPUs (never pid 0: that is the calling thread)
        self._current_cpu = CURRENT_CPU if self._writer_tid else None
        self._writer_cpu = -1  # the CPU the writer was last confined to

    # -- Trio side -------------------------------------------------------------------------

    def offer(self, version: int, publication: Publication) -> None:
        self._follow_trio_cpu()
        with self._wake:
            self._offered = (version, publication)  # an older one not yet taken is skipped
            self._wake.notify()
            idle = self._idle
        if idle:  # let the thread write now (module docstring)
            deadline = time.monotonic() + HAND_OVER_WAIT_S
            while self._done < version and time.monotonic() < deadline:
                os.sched_yield()  # (module docstring)

    def _follow_trio_cpu(self) -> None:
        """Confine the writer to the CPU this (the Trio) thread runs on (module docstring)."""
        if self._current_cpu is None:
            return
        cpu = self._current_cpu()
        if cpu == self._writer_cpu or cpu < 0 or not self._thread.is_alive():
            return  # (a thread that ended may have left its id to another)
        try:
            os.sched_setaffinity(self._writer_tid, {cpu})
        except (OSError, ValueError) as exc:
            logger.debug("%s: writer stays on the process's CPUs: %s", self._name, exc)
            self._current_cpu = None
            return
        self._writer_cpu = cpu

    async def failed(self) -> None:
        """Wait until a write fails, then raise its OSError."""
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    async def stop(self) -> None:
        """Let the thread write what is offered, close the stream and end. Waits for that at
        most STOP_WAIT_S (also when cancelled: a line published just before a shutdown still
        reaches the file), then leaves a stuck thread behind (it is a daemon)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_WAIT_S):
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)

    def _report(self, version: int, error: OSError | None) -> None:
        self._delivered(version, None if error is None else str(error))
        if error is not None and self._failure is None:
            self._failure = error
            self._failed.set()

    # -- thread side -----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                with self._wake:
                    self._idle = True
                    while self._offered is None and not self._stopping:
                        self._wake.wait()
                    self._idle = False
                    offered, self._offered = self._offered, None
                    stopping = self._stopping
                if offered is not None:
                    version, publication = offered
                    line = self._line(version, publication)
                    error = None if line is None else self._write(line)
                    self._done = version  # an offer may be waiting for this line
                    if line is not None:
                        with contextlib.suppress(trio.RunFinishedError):  # the bridge is gone
                            self._token.run_sync_soon(self._report, version, error)
                    if error is not None:
                        return  # the stream is done for; the sink reopens it
                if stopping and offered is None:
                    return
        finally:
            if self._owns_stream:
                # A close that fails after a failed write adds nothing: that write is reported.
                with contextlib.suppress(OSError):
                    self._stream.close()

    def _line(self, version: int, publication: Publication) -> str | None:
        """The line to write; None for a publication JSON cannot carry (skipped, logged)."""
        try:
            return jsonl_line(publication) + "\n"
        except ValueError as exc:
            logger.error("%s: publication %d not written: %s", self._name, version, exc)
            return None

    def _write(self, line: str) -> OSError | None:
        """Write and flush one line; returns the error of a failed write."""
        try:
            _write_and_flush(self._stream, line)
        except OSError as exc:
            return exc
        return None
