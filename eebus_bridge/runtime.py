"""`eebus-bridge run`: the supervised Trio program.

    Bridge.run
      ├─ lpc task        LpcRunner.run: engine inputs, deadlines, decisions     (whole process)
      ├─ output tasks    one per sink, latest-value delivery                    (whole process)
      ├─ history task    HistoryStore.run: the activity feed into SQLite        (whole process)
      └─ connection group, restarted as a whole with backoff when any member fails:
           ├─ sidecar task   SidecarProcess.run (when [sidecar] manage = true)
           └─ eebus task     EebusLink.run: handshake, streams, RPCs with deadlines

Why the lpc and output tasks sit outside the restarted group: a restart is a communication loss,
handled by the heartbeat rule, and the failsafe must still be published on time while the group
waits out its backoff (up to a minute). Only the tasks that talk to the sidecar restart; they
are cancelled and restarted together, so a restarted eebus task always meets a fresh sidecar.
The lpc and output tasks are restarted on their own if they ever fail (that would be a bug).

Exit means exit: SIGTERM or SIGINT ends the process within SHUTDOWN_BUDGET_S (2 s), whatever a
thread is doing. Three parts make that hold:

- The signal handler is a plain Python handler (not a Trio signal receiver), so it runs even
  while the main thread is stuck in a blocking call such as a write to a full stderr pipe: the
  kernel interrupts the call, Python runs the handler, then retries the call. The handler only
  arms the exit deadline and asks Trio (`run_sync_soon`, safe from signal handlers) to cancel
  the bridge; it never logs, because the logging lock may be held by the interrupted code.
- The exit deadline is a daemon thread that sleeps until the budget is almost spent, then
  SIGKILLs any sidecar process group still alive, writes one line to stderr if the pipe takes
  it without blocking, and calls `os._exit`. It is the bound for everything that can hang:
  Trio tasks that cannot be cancelled (a worker thread in fsync), a blocked log write, the
  interpreter's exit (joins of non-daemon threads and of executor threads such as asyncio's
  default executor used for name resolution, atexit handlers, flushing stdio).
- After a clean `trio.run`, `run_bridge` does not go through the interpreter's exit at all: the
  sidecar group is gone, the state file is synced and every log line written (stderr is line
  buffered), so it flushes stdio and ends with `os._exit`. Nothing that some library left
  running can hold the process; the deadline still covers a flush that blocks.

The exit status after a signal is 0 (a requested stop), also when the deadline had to end it;
the deadline's line on stderr then says so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import NoReturn

import trio

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import Config
from eebus_bridge.eebus_link import EebusLink, HandshakeFailed
from eebus_bridge.failsafe_store import load_failsafe_values
from eebus_bridge.history import HistoryStore, read_history, timeline_svg
from eebus_bridge.island import open_island
from eebus_bridge.logs import emergency_line
from eebus_bridge.lpc_runner import LpcRunner
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sidecar_client import SidecarRpcError, SidecarUnreachable
from eebus_bridge.sidecar_process import (
    SidecarExited,
    SidecarProcess,
    kill_running_sidecars,
    sidecar_command,
)
from eebus_bridge.sinks import Sink, make_sink
from eebus_bridge.start_up import freeze_start_up
from eebus_bridge.status import HistoryAccess, StatusEndpoint, StatusSources, StatusTracker

log = logging.getLogger("eebus_bridge")

BACKOFF_CAP_S = 60.0
HEALTHY_AFTER_S = 60.0  # a group that ran this long resets the backoff
SIDECAR_GRACE_S = 1.0  # SIGTERM -> SIGKILL; keeps a clean shutdown within 2 s
SHUTDOWN_BUDGET_S = 2.0  # from SIGTERM/SIGINT to the process being gone
_EXIT_MARGIN_S = 0.15  # os._exit this long before the budget ends (process teardown)
_EXIT_AFTER_RUN_S = 1.0  # bound for flushing stdio when no signal armed the deadline
EXIT_OK = 0
EXIT_FAILURE = 1
GIL_SWITCH_INTERVAL_S = 0.0005  # see Bridge.run


def restart_backoff(
    initial_s: float, maximum_s: float = BACKOFF_CAP_S, *, rng: random.Random | None = None
) -> Backoff:
    """Start at `initial_s`, double up to `maximum_s` (60 s unless configured), +-20 % jitter
    (jitter never goes above the cap); reset after 60 s of healthy running."""
    return Backoff(
        BackoffPolicy(
            initial_s=initial_s,
            maximum_s=max(maximum_s, initial_s),
            healthy_s=HEALTHY_AFTER_S,
            jitter=0.2,
        ),
        rng=rng,
    )


def describe_failure(exc: BaseException) -> str:
    """One line naming every leaf exception of a (possibly nested) group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_failure(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# Failures of the sidecar connection that are part of life (logged as one warning line);
# anything else is a bug and is logged with its traceback.
_EXPECTED_FAILURES = (
    SidecarExited,
    SidecarUnreachable,
    SidecarRpcError,
    HandshakeFailed,
    trio.TooSlowError,
)


def _is_expected(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_expected(e) for e in exc.exceptions)
    return isinstance(exc, _EXPECTED_FAILURES)


class Bridge:
    """The whole bridge for one config. `run()` needs an open trio-asyncio loop."""

    def __init__(
        self,
        config: Config,
        *,
        publications: LatestValue[Publication] | None = None,
        activity: ActivityFeed | None = None,
        extra_sinks: Sequence[Sink] = (),
    ) -> None:
        """`extra_sinks` deliver besides the config's outputs (the EVerest module's own sink)."""
        self.config = config
        self.activity = activity if activity is not None else ActivityFeed()
        self.publications = publications if publications is not None else LatestValue()
        self.runner = LpcRunner(config, self.publications, activity=self.activity)
        self.link = EebusLink(config, self.runner)
        self.sinks: list[Sink] = [
            make_sink(output, config.lpc, activity=self.activity) for output in config.outputs
        ]
        self.sinks.extend(extra_sinks)
        self.connections = 0  # completed handshakes, for status and tests
        self.connected = trio.Event()  # set on each completed handshake, replaced on failure
        self.history: HistoryStore | None = None
        if config.history.enabled:
            self.history = HistoryStore(config.history_path, config.history.retention_days)
            self.activity.subscribe(self.history.observe)
        self.status = StatusTracker(sink.name for sink in self.sinks)
        if config.status.listen:  # no observer, no cost, when the endpoint is off
            self.activity.subscribe(self.status)
        sources = StatusSources(
            config,
            self.status,
            self.runner.engine,
            self.publications,
            trio.current_time,
            history_enabled=config.history.enabled,
            history_writer=self.history,
        )
        history = (
            HistoryAccess(config.history_path, read_history, timeline_svg)
            if config.history.enabled
            else None
        )
        self.status_endpoint = StatusEndpoint(sources, config.status, history=history)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The bridge's other threads (the history writer, a sink's writer thread, everestpy's
        # calls) may hold the GIL while the Trio thread has an event to handle: Python makes it
        # wait up to the switch interval for it, 5 ms by default. 0.5 ms caps that wait; the
        # cost is more frequent hand-overs only while two threads want to run at once.
        # Measured: p99 of both event paths 1.5-1.8x -> 1.3-1.5x of the minimal client (README).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.activity.record("bridge", event="start")
        try:
            await self._run(task_status=task_status)
        finally:
            self.activity.record("bridge", event="stop")
            if self.history is not None:
                await self.history.aclose()

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        self.runner.start(load_failsafe_values(self.config.lpc.state_file))
        async with trio.open_nursery() as nursery:
            if self.history is not None:
                nursery.start_soon(self._keep_running, "history", self.history.run)
            nursery.start_soon(self._keep_running, "lpc", self.runner.run)
            for sink in self.sinks:
                nursery.start_soon(
                    self._keep_running, sink.name, functools.partial(sink.run, self.publications)
                )
            if self.config.status.listen:
                nursery.start_soon(self._keep_running, "status", self.status_endpoint.run)
            task_status.started()
            await self._supervise_connection()

    async def _keep_running(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
                log.error("%s task returned; restarting it", name)
            except Exception:
                log.exception("%s task failed; restarting it", name)
            await trio.sleep(1.0)

    async def _supervise_connection(self) -> None:
        managed = self.config.sidecar.manage
        sidecar_config, eebus = self.config.sidecar, self.config.eebus
        initial = sidecar_config.restart_delay_s if managed else eebus.reconnect_delay_s
        cap = sidecar_config.restart_delay_max_s if managed else eebus.reconnect_delay_max_s
        backoff = restart_backoff(initial, cap)  # a cap below `initial` counts as `initial`
        while True:
            backoff.connected()  # a group that runs for HEALTHY_AFTER_S resets the delay
            pid: int | None = None
            reason = "ended without an error"
            try:
                async with trio.open_nursery() as group:
                    if managed:
                        sidecar = SidecarProcess(
                            sidecar_command(self.config), grace_s=SIDECAR_GRACE_S
                        )
                        pid = await group.start(sidecar.run)
                        self.activity.record("sidecar", event="start", pid=pid)
                    await group.start(self.link.run)
                    self.connections += 1
                    self.connected.set()
            except Exception as exc:
                reason = describe_failure(exc)
                if _is_expected(exc):
                    log.warning("sidecar connection lost: %s", reason)
                else:
                    log.exception("sidecar connection failed unexpectedly")
            except BaseExceptionGroup as group:
                # Cancelled (shutting down) while the connection also failed: stopping the
                # sidecar breaks the streams and calls still in flight. Those failures are the
                # shutdown's own doing; only the cancellation may leave, or the bridge would
                # exit with an error after a clean SIGTERM.
                cancelled, failures = group.split(trio.Cancelled)
                if cancelled is None:
                    raise
                if failures is not None:
                    log.debug("while shutting down: %s", describe_failure(failures))
                raise cancelled from None
            else:  # pragma: no cover - the group's tasks only end by raising
                log.error("sidecar connection ended without an error")
            self.connected = trio.Event()
            self.activity.record("connection", event="lost", reason=reason)
            if pid is not None:  # the group's exit stopped the sidecar (or it exited first)
                self.activity.record("sidecar", event="exit", pid=pid, reason=reason)
            delay = backoff.next_delay()
            what = "restarting the sidecar" if managed else "reconnecting to the sidecar"
            log.warning("%s in %.1f s", what, delay)
            if managed:
                self.activity.record("sidecar", event="restart", delay_s=delay, reason=reason)
            await trio.sleep(delay)


class ExitDeadline:
    """Ends the process with `os._exit(code)` a set time after `arm()`, from a daemon thread.

    The thread is started up front and waits on a pipe, so that arming is one flag and one
    `os.write`: safe inside a signal handler that may have interrupted code holding a lock
    (starting a thread there could deadlock on threading's own lock). Armed once; later calls
    are ignored.
    """

    def __init__(self) -> None:
        self.armed_at: float | None = None  # time.monotonic() when armed
        self._within_s = 0.0
        self._code = EXIT_OK
        self._wake_read, self._wake_write = os.pipe()
        threading.Thread(target=self._watch, name="eebus-bridge exit deadline", daemon=True).start()

    def arm(self, within_s: float, code: int) -> None:
        if self.armed_at is not None:
            return
        self._within_s, self._code = within_s, code
        self.armed_at = time.monotonic()
        os.write(self._wake_write, b"!")

    def _watch(self) -> None:
        os.read(self._wake_read, 1)
        assert self.armed_at is not None
        time.sleep(max(0.0, self.armed_at + self._within_s - time.monotonic()))
        kill_running_sidecars()
        line = emergency_line(
            "eebus_bridge",
            logging.WARNING,
            "shutdown still busy at its time limit (a blocked thread, pipe or exit handler): "
            "ending the process now",
        )
        try:  # only if stderr takes it at once: it may be the very pipe that is blocked
            os.set_blocking(2, False)
            os.write(2, line)
        except OSError:
            pass
        os._exit(self._code)


class _SignalShutdown:
    """SIGINT/SIGTERM: arm the exit deadline, then cancel the bridge inside Trio."""

    def __init__(self, deadline: ExitDeadline) -> None:
        self._deadline = deadline
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._received: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def attach(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` on a signal (at once if one came before Trio was running)."""
        self._token = trio.lowlevel.current_trio_token()
        self._scope = scope
        if self._received is not None:
            self._cancel(self._received)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._deadline.arm(SHUTDOWN_BUDGET_S - _EXIT_MARGIN_S, EXIT_OK)
        if self._received is not None:
            return
        self._received = signum
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._cancel, signum, idempotent=True)

    def _cancel(self, signum: int) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        if self._scope is not None:
            self._scope.cancel()


async def _main(config: Config, shutdown: _SignalShutdown) -> None:
    freeze_start_up()
    with trio.CancelScope() as scope:
        shutdown.attach(scope)
        async with open_island():
            await Bridge(config).run()


def run_bridge(config: Config) -> NoReturn:
    """Run until SIGINT/SIGTERM, then end the process (0 after a requested stop, 1 after an
    unexpected failure) within SHUTDOWN_BUDGET_S of the signal. Never returns."""
    deadline = ExitDeadline()
    shutdown = _SignalShutdown(deadline)
    shutdown.install()
    log.info(
        "eebus-bridge starting: sidecar %s on port %d, %d output(s)",
        "managed" if config.sidecar.manage else "external",
        config.eebus.grpc_port,
        len(config.outputs),
    )
    code = EXIT_OK
    try:
        trio.run(_main, config, shutdown)
    except Exception:
        log.exception("unexpected error; exiting")
        code = EXIT_FAILURE
    deadline.arm(_EXIT_AFTER_RUN_S, code)
    log.info("eebus-bridge stopped")
    _end_process(code)


def _end_process(code: int) -> NoReturn:
    """Flush stdio and leave without the interpreter's exit (thread joins, atexit handlers)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
