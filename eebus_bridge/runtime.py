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
"""

from __future__ import annotations

import functools
import gc
import logging
import random
import signal
from collections.abc import Awaitable, Callable, Sequence

import trio
import trio_asyncio

from eebus_bridge.activity import ActivityFeed
from eebus_bridge.backoff import Backoff, BackoffPolicy
from eebus_bridge.config import Config
from eebus_bridge.eebus_link import EebusLink, HandshakeFailed
from eebus_bridge.failsafe_store import load_failsafe_values
from eebus_bridge.history import HistoryStore, read_history, timeline_svg
from eebus_bridge.lpc_runner import LpcRunner
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sidecar_client import SidecarRpcError, SidecarUnreachable
from eebus_bridge.sidecar_process import SidecarExited, SidecarProcess, sidecar_command
from eebus_bridge.sinks import Sink, make_sink
from eebus_bridge.status import HistoryAccess, StatusEndpoint, StatusSources, StatusTracker

log = logging.getLogger("eebus_bridge")

BACKOFF_CAP_S = 60.0
HEALTHY_AFTER_S = 60.0  # a group that ran this long resets the backoff
SIDECAR_GRACE_S = 1.0  # SIGTERM -> SIGKILL; keeps a clean shutdown within 2 s


def restart_backoff(initial_s: float, *, rng: random.Random | None = None) -> Backoff:
    """Start at `initial_s`, double up to 60 s, +-20 % jitter (never above 60 s: the caller
    caps it); reset after 60 s of healthy running."""
    return Backoff(
        BackoffPolicy(
            initial_s=initial_s, maximum_s=BACKOFF_CAP_S, healthy_s=HEALTHY_AFTER_S, jitter=0.2
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
        initial = (
            self.config.sidecar.restart_delay_s if managed else self.config.eebus.reconnect_delay_s
        )
        backoff = restart_backoff(initial)
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
            else:  # pragma: no cover - the group's tasks only end by raising
                log.error("sidecar connection ended without an error")
            self.connected = trio.Event()
            self.activity.record("connection", event="lost", reason=reason)
            if pid is not None:  # the group's exit stopped the sidecar (or it exited first)
                self.activity.record("sidecar", event="exit", pid=pid, reason=reason)
            delay = min(backoff.next_delay(), BACKOFF_CAP_S)
            what = "restarting the sidecar" if managed else "reconnecting to the sidecar"
            log.warning("%s in %.1f s", what, delay)
            if managed:
                self.activity.record("sidecar", event="restart", delay_s=delay, reason=reason)
            await trio.sleep(delay)


async def _exit_on_signal(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received: shutting down", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


async def _main(config: Config) -> None:
    # Everything imported and built so far lives as long as the process: keep it out of the
    # garbage collector's full passes (a 20 ms pause each) that would otherwise delay answers.
    gc.collect()
    gc.freeze()
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        nursery.start_soon(_exit_on_signal, nursery.cancel_scope)
        await Bridge(config).run()


def run_bridge(config: Config) -> int:
    """Run until SIGINT/SIGTERM; 0 after a clean shutdown."""
    log.info(
        "eebus-bridge starting: sidecar %s on port %d, %d output(s)",
        "managed" if config.sidecar.manage else "external",
        config.eebus.grpc_port,
        len(config.outputs),
    )
    trio.run(_main, config)
    log.info("eebus-bridge stopped")
    return 0
