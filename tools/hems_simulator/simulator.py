"""One simulated sidecar with its energy guard, as an object tests and the CLI can hold.

Everything runs in the caller's Trio run: the grpclib servers on the trio-asyncio loop, the
EG timers, approval timeouts and the control interface as Trio tasks.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from eebus_bridge.generated.common_types import LoadLimit
from eebus_bridge.island import open_island

from .channels import FreezeGate
from .eg import SimulatedEnergyGuard
from .errors import unwrapped_exception_groups
from .logs import SimLog
from .records import ApprovalRecord, EventRecord, RecordBook, RpcRecord, message_to_dict
from .scenario import ActionSpec, Scenario, load_scenario, with_overrides
from .servers import AbortableServer, ControlService, HeldRpc, RpcRunner, ServerSet
from .sidecar import (
    NS_PER_S,
    Lifecycle,
    LpcData,
    SimulatedSidecar,
    SimulatorCrashed,
    SimulatorError,
    remote_service,
)

# Live-control actions and the parameters each accepts (see README.md, "Control interface").
CONTROL_ACTIONS: dict[str, frozenset[str]] = {
    "send_limit": frozenset({"value", "active", "duration_s"}),
    "write_failsafe_limit": frozenset({"value"}),
    "write_failsafe_duration": frozenset({"duration_s"}),
    "stop_heartbeat": frozenset(),
    "start_heartbeat": frozenset(),
    "send_heartbeat": frozenset(),
    "disconnect": frozenset(),
    "reconnect": frozenset(),
    "set_ski": frozenset({"ski"}),
    "freeze": frozenset(),
    "unfreeze": frozenset(),
    "status": frozenset(),
}


class HemsSimulator:
    """A running simulated `eebus_grpc_api` plus its simulated energy guard.

    Use open_hems_simulator() to get one; its attributes are live views of the state.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        log: SimLog,
        record_path: Path | None = None,
        on_crash: Callable[[str], None] | None = None,
        local_ski: str | None = None,
        local_ski_problem: str = "",
    ) -> None:
        self.scenario = scenario
        self.log = log
        self.book = RecordBook(trio.current_time, record_path)
        self.gate = FreezeGate()
        self.servers = ServerSet()
        self.port = 0
        self.control_port: int | None = None
        self.crashed = False
        self.crash_reason: str | None = None
        self.cs_heartbeats_sent = 0
        self._on_crash = on_crash
        self._crashed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._eg_scope = trio.CancelScope()
        self._local_heartbeat_changed = trio.Event()
        spec = scenario.sidecar
        self.sidecar = SimulatedSidecar(
            clock=trio.current_time,
            log=log,
            records=self.book,
            schedule=self._schedule,
            approval_timeout_s=spec.approval_timeout_s,
            heartbeat_window_s=spec.heartbeat_window_s,
            strict_config=spec.strict_config,
            lose_event_on_stream_break=spec.lose_event_on_stream_break,
            local_ski=local_ski,
            local_ski_problem=local_ski_problem,
        )
        self.eg = SimulatedEnergyGuard(scenario, self.sidecar, log, random.Random(scenario.seed))
        self.sidecar.on_trusted = self.eg.on_trusted
        self.sidecar.on_approval = self.eg.note_answer
        self.sidecar.on_stopped = self._service_stopped
        self.sidecar.on_local_heartbeat_changed = self._wake_local_heartbeat
        self.sidecar.on_subscribers_changed = self._wake_subscriber_waiters
        self._subscribers_changed = trio.Event()
        self._runner = RpcRunner(records=self.book, gate=self.gate, on_crash=self._crash)

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> Lifecycle:
        return self.sidecar.state

    @property
    def records(self) -> list[RpcRecord]:
        return self.book.rpcs

    @property
    def approvals(self) -> list[ApprovalRecord]:
        return self.book.approvals

    @property
    def events(self) -> list[EventRecord]:
        return self.book.events

    @property
    def frozen(self) -> bool:
        return self.gate.frozen

    @property
    def lpc_port(self) -> int | None:
        entry = self.sidecar.cs_lpc
        return entry.port if entry is not None else None

    @property
    def eg_connected(self) -> bool:
        return self.eg.connected

    @property
    def eg_ski(self) -> str:
        return self.eg.ski

    @property
    def trusted_skis(self) -> frozenset[str]:
        return frozenset(self.sidecar.trusted_skis)

    @property
    def event_subscribers(self) -> int:
        """SubscribeUseCaseEvents handlers waiting for the next event right now."""
        entry = self.sidecar.cs_lpc
        return entry.events.waiting_count if entry is not None and entry.events else 0

    @property
    def local_heartbeat_running(self) -> bool:
        return self.sidecar.local_heartbeat_period_s is not None

    def _lpc(self) -> LpcData | None:
        entry = self.sidecar.cs_lpc
        return entry.lpc if entry is not None else None

    @property
    def limit(self) -> LoadLimit | None:
        """The limit as ConsumptionLimit would return it now (None before AddUseCase)."""
        lpc = self._lpc()
        return self.sidecar.consumption_limit(lpc) if lpc is not None else None

    @property
    def pending_writes(self) -> dict[int, LoadLimit]:
        lpc = self._lpc()
        return self.sidecar.pending_limits(lpc) if lpc is not None else {}

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot (the control interface's `status` answer)."""
        lpc = self._lpc()
        lpc_status: dict[str, Any] | None = None
        if lpc is not None:
            limit = self.sidecar.consumption_limit(lpc)
            lpc_status = {
                "limit": message_to_dict(limit),
                "pending": {
                    str(counter): message_to_dict(item)
                    for counter, item in self.sidecar.pending_limits(lpc).items()
                },
                "failsafe_limit": _finite_or_text(lpc.failsafe_limit),
                "failsafe_duration_s": lpc.failsafe_duration_ns / NS_PER_S,
                "nominal_max": None
                if lpc.nominal_max is None
                else _finite_or_text(lpc.nominal_max),
            }
        return {
            "state": self.state.value,
            "port": self.port,
            "lpc_port": self.lpc_port,
            "crashed": self.crashed,
            "frozen": self.frozen,
            "trusted_skis": sorted(self.sidecar.trusted_skis),
            "local_heartbeat": self.local_heartbeat_running,
            "cs_heartbeats_sent": self.cs_heartbeats_sent,
            "heartbeat_within_duration": self.sidecar.is_heartbeat_within_duration(),
            "eg": {
                "ski": self.eg.ski,
                "visible": self.eg.visible,
                "connected": self.eg.connected,
                "heartbeat": self.eg.heartbeat_enabled,
                "msg_counter": self.eg.msg_counter,
            },
            "lpc": lpc_status,
            "records": {
                "rpc": len(self.book.rpcs),
                "approval": len(self.book.approvals),
                "event": len(self.book.events),
            },
        }

    # ------------------------------------------------------------------ EG controls

    def _alive(self) -> None:
        if self.crashed:
            raise SimulatorError(f"the simulated sidecar crashed ({self.crash_reason})")

    def send_limit(self, value: float, *, active: bool = True, duration_s: float = 0.0) -> int:
        """The EG writes a limit (WriteApprovalRequired follows); returns its msg counter."""
        self._alive()
        return self.eg.send_limit(value, active=active, duration_s=duration_s)

    def write_failsafe_limit(self, value: float) -> None:
        self._alive()
        self.eg.write_failsafe_limit(value)

    def write_failsafe_duration(self, duration_s: float) -> None:
        self._alive()
        self.eg.write_failsafe_duration(duration_s)

    def stop_eg_heartbeat(self) -> None:
        self._alive()
        self.eg.stop_heartbeat()

    def start_eg_heartbeat(self) -> None:
        self._alive()
        self.eg.start_heartbeat()

    def send_eg_heartbeat(self) -> None:
        self._alive()
        self.eg.send_heartbeat()

    def inject_event(self, name: str, ski: str = "", entity: tuple[int, ...] = (1,)) -> None:
        """Emit a raw use-case event, as a faulty or newer sidecar might (robustness tests)."""
        self._alive()
        self.sidecar._emit(name, ski, entity)

    def overwrite_values(
        self,
        *,
        limit_value: float | None = None,
        limit_active: bool | None = None,
        limit_duration_ns: int | None = None,
        failsafe_limit: float | None = None,
        failsafe_duration_ns: int | None = None,
    ) -> None:
        """Change stored LPC values behind the client's back, bypassing every check, so that
        tests can make the sidecar return values no real EG write should produce."""
        self._alive()
        lpc = self._lpc()
        if lpc is None:
            raise SimulatorError("the LPC use case has not been added yet")
        if limit_value is not None:
            lpc.limit.value = limit_value
        if limit_active is not None:
            lpc.limit.is_active = limit_active
        if limit_duration_ns is not None:
            lpc.limit.duration_ns = limit_duration_ns
            lpc.limit.set_at = self.sidecar._clock()
        if failsafe_limit is not None:
            lpc.failsafe_limit = failsafe_limit
        if failsafe_duration_ns is not None:
            lpc.failsafe_duration_ns = failsafe_duration_ns

    def disconnect_eg(self) -> None:
        self._alive()
        self.eg.disconnect()

    def reconnect_eg(self) -> None:
        self._alive()
        self.eg.reconnect()

    def set_eg_ski(self, ski: str) -> None:
        self._alive()
        self.eg.set_ski(ski)

    def freeze(self) -> None:
        """Stop answering RPCs and streaming events (like SIGSTOP) until unfreeze()."""
        self.gate.freeze()
        self.log.info("Simulator frozen")

    def unfreeze(self) -> None:
        self.gate.thaw()
        self.log.info("Simulator unfrozen")

    def hold_rpc(self, method: str, seconds: float) -> HeldRpc:
        """Answer the next call of `method` (e.g. "cs_lpc.ConsumptionLimit") `seconds` late,
        with the value of when it arrived; other RPCs and the streams go on meanwhile."""
        self._alive()
        return self._runner.hold_next(method, seconds)

    def apply_action(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Run one control-interface command; never raises, answers {"ok": ..., ...}."""
        action = request.get("action")
        if not isinstance(action, str) or action not in CONTROL_ACTIONS:
            known = ", ".join(CONTROL_ACTIONS)
            return {"ok": False, "error": f"unknown action {action!r} (known: {known})"}
        unknown = sorted(set(request) - {"action"} - CONTROL_ACTIONS[action])
        if unknown:
            return {"ok": False, "error": f"{action}: unknown parameter(s) {', '.join(unknown)}"}
        try:
            return {"ok": True, **self._apply(action, request)}
        except (SimulatorError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}

    def _apply(self, action: str, request: Mapping[str, Any]) -> dict[str, Any]:
        if action == "send_limit":
            counter = self.send_limit(
                _number(request, "value"),
                active=_flag(request, "active", True),
                duration_s=_number(request, "duration_s", 0.0),
            )
            return {"msg_counter": counter}
        if action == "write_failsafe_limit":
            self.write_failsafe_limit(_number(request, "value"))
        elif action == "write_failsafe_duration":
            self.write_failsafe_duration(_number(request, "duration_s"))
        elif action == "stop_heartbeat":
            self.stop_eg_heartbeat()
        elif action == "start_heartbeat":
            self.start_eg_heartbeat()
        elif action == "send_heartbeat":
            self.send_eg_heartbeat()
        elif action == "disconnect":
            self.disconnect_eg()
        elif action == "reconnect":
            self.reconnect_eg()
        elif action == "set_ski":
            ski = request.get("ski")
            if not isinstance(ski, str):
                raise ValueError("set_ski: ski must be a string")
            self.set_eg_ski(ski)
        elif action == "freeze":
            self.freeze()
        elif action == "unfreeze":
            self.unfreeze()
        elif action == "status":
            return self.status()
        return {}

    def perform(self, action: ActionSpec) -> None:
        """Run a scenario action now (same effect as when its time comes)."""
        self._alive()
        self.eg.perform(action)

    # ------------------------------------------------------------------ waiting

    async def wait_for_record(
        self,
        method: str | None = None,
        predicate: Callable[[RpcRecord], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's own deadline
        start: int = 0,
    ) -> RpcRecord:
        """The first RPC record (index >= start) with this method and predicate.
        Raises trio.TooSlowError after timeout seconds of the Trio clock."""

        def match(record: RpcRecord) -> bool:
            return (method is None or record.method == method) and (
                predicate is None or predicate(record)
            )

        with trio.fail_after(timeout):
            return await self.book.wait_for(self.book.rpcs, match, start=start)

    async def wait_for_approval(
        self,
        predicate: Callable[[ApprovalRecord], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's own deadline
        start: int = 0,
    ) -> ApprovalRecord:
        with trio.fail_after(timeout):
            return await self.book.wait_for(
                self.book.approvals, predicate or (lambda record: True), start=start
            )

    async def wait_for_event(
        self,
        name: str | None = None,
        predicate: Callable[[EventRecord], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's own deadline
        start: int = 0,
    ) -> EventRecord:
        def match(record: EventRecord) -> bool:
            return (name is None or record.name == name) and (
                predicate is None or predicate(record)
            )

        with trio.fail_after(timeout):
            return await self.book.wait_for(self.book.events, match, start=start)

    async def wait_eg_connected(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a test helper's own deadline
        with trio.fail_after(timeout):
            await self.eg.first_connected.wait()

    async def wait_for_subscribers(
        self,
        count: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's own deadline
    ) -> None:
        """Until exactly `count` use-case event handlers wait for the next event (a
        subscription took effect, or the server noticed a broken stream)."""
        with trio.fail_after(timeout):
            while self.event_subscribers != count:
                await self._subscribers_changed.wait()

    async def wait_crashed(self, *, timeout: float = 5.0) -> str:  # noqa: ASYNC109 - a test helper's own deadline
        with trio.fail_after(timeout):
            await self._crashed.wait()
        return self.crash_reason or ""

    # ------------------------------------------------------------------ internals

    def _schedule(self, delay: float, callback: Callable[[], None]) -> None:
        if self._nursery is None:
            raise RuntimeError("simulator is not running")
        self._nursery.start_soon(self._run_later, delay, callback)

    async def _run_later(self, delay: float, callback: Callable[[], None]) -> None:
        await trio.sleep(delay)
        if self.crashed:
            return
        try:
            callback()
        except Exception as exc:  # a bug in one timer must not take the simulator down
            self.log.error(f"Simulator timer failed: {exc!r}")

    def _wake_subscriber_waiters(self) -> None:
        self._subscribers_changed.set()
        self._subscribers_changed = trio.Event()

    def _wake_local_heartbeat(self) -> None:
        self._local_heartbeat_changed.set()
        self._local_heartbeat_changed = trio.Event()

    async def _local_heartbeats(self) -> None:
        """Our (the CS's) heartbeat to the EG, every heartbeat_timeout - 2 s while started."""
        while True:
            period = self.sidecar.local_heartbeat_period_s
            if period is None:
                await self._local_heartbeat_changed.wait()
                continue
            await trio.sleep(period)
            if self.sidecar.local_heartbeat_period_s is not None and not self.crashed:
                self.cs_heartbeats_sent += 1
                self.eg.note_cs_heartbeat()

    def _service_stopped(self) -> None:
        self.eg.on_service_stopped()
        self._eg_scope.cancel()

    def _crash(self, reason: str) -> None:
        self.log.log("FATAL", f"panic: {reason}")
        if self._on_crash is not None:
            self._on_crash(reason)  # the CLI exits the process here
        self.crashed = True
        self.crash_reason = reason
        self.servers.abort_all()
        self._eg_scope.cancel()
        self._crashed.set()

    async def _show_other_egs(self) -> None:
        """The scenario's [[other_eg]]s appear on mDNS once the service runs, and stay."""
        await self.sidecar.running.wait()
        started = trio.current_time()
        for spec in sorted(self.scenario.other_egs, key=lambda eg: eg.connect_delay_s):
            await trio.sleep_until(started + self.scenario.scaled(spec.connect_delay_s))
            if self.sidecar.state is not Lifecycle.RUNNING:
                return
            self.sidecar.eg_visible(remote_service(spec, spec.ski))

    async def _run_eg(self) -> None:
        with self._eg_scope:
            await self.eg.run()

    async def _start(self, nursery: trio.Nursery, *, host: str, port: int) -> None:
        self._nursery = nursery

        async def start_control_service() -> AbortableServer:
            service = ControlService(
                self.sidecar,
                self._runner,
                self.servers,
                self.log,
                discovery=self.scenario.sidecar.discovery,
            )
            server = AbortableServer([service])
            await server.start(host, port)
            return server

        server = await trio_asyncio.aio_as_trio(start_control_service)()
        self.servers.add(server)
        self.port = server.port
        nursery.start_soon(self._run_eg)
        nursery.start_soon(self._local_heartbeats)
        nursery.start_soon(self._show_other_egs)

    async def _shutdown(self) -> None:
        self.servers.abort_all()
        try:
            await trio_asyncio.aio_as_trio(self.servers.close_all)()
        finally:
            self.book.close()


def _number(request: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = request.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"{key} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number")
    return float(value)


def _flag(request: Mapping[str, Any], key: str, default: bool) -> bool:
    value = request.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _finite_or_text(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


@asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[None]:
    """Use the caller's trio-asyncio loop, or open one for the simulator's lifetime."""
    loop = trio_asyncio.current_loop.get(None)
    if loop is not None and loop.is_running():
        yield
        return
    async with open_island():
        yield


@asynccontextmanager
async def open_hems_simulator(
    scenario: Scenario | str | Path = "controlbox",
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    control_port: int | None = None,
    record_path: Path | None = None,
    log: SimLog | None = None,
    time_scale: float | None = None,
    seed: int | None = None,
    eg_ski: str | None = None,
    connect_delay_s: float | None = None,
    heartbeat_period_s: float | None = None,
    requires_trust: bool | None = None,
    clock_skew_s: float | None = None,
    approval_timeout_s: float | None = None,
    heartbeat_window_s: float | None = None,
    discovery: bool | None = None,
    lose_event_on_stream_break: bool | None = None,
    strict_config: bool | None = None,
    actions: tuple[ActionSpec, ...] | None = None,
    allow_crash: bool = False,
    on_crash: Callable[[str], None] | None = None,
    local_ski: str | None = None,
    local_ski_problem: str = "",
) -> AsyncIterator[HemsSimulator]:
    """Run a simulated sidecar + EG for the duration of the `async with` block.

    scenario: a Scenario, a preset name or a TOML path. port 0 picks a free port (sim.port).
    control_port: None = no TCP control interface, 0 = a free one (sim.control_port).
    The keyword overrides replace scenario values (see scenario.with_overrides).
    Uses the running trio-asyncio loop if there is one, else opens its own.
    Where the real sidecar would crash, the simulator drops every connection and marks
    itself crashed (sim.crashed, sim.wait_crashed()); leaving the block then raises
    SimulatorCrashed unless allow_crash=True. on_crash is for the CLI (it exits there).
    local_ski: the SKI of the certificate loaded at start-up, logged after StartSetup
    (local_ski_problem says why there is none).
    """
    base = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    resolved = with_overrides(
        base,
        time_scale=time_scale,
        seed=seed,
        eg_ski=eg_ski,
        connect_delay_s=connect_delay_s,
        heartbeat_period_s=heartbeat_period_s,
        requires_trust=requires_trust,
        clock_skew_s=clock_skew_s,
        approval_timeout_s=approval_timeout_s,
        heartbeat_window_s=heartbeat_window_s,
        discovery=discovery,
        lose_event_on_stream_break=lose_event_on_stream_break,
        strict_config=strict_config,
        actions=actions,
    )
    with unwrapped_exception_groups():
        async with (
            _asyncio_loop(),
            _running_simulator(
                resolved,
                host,
                port,
                control_port,
                record_path,
                log,
                on_crash,
                (local_ski, local_ski_problem),
            ) as sim,
        ):
            yield sim
    if sim.crashed and not allow_crash:
        raise SimulatorCrashed(f"the simulated sidecar crashed: {sim.crash_reason}")


@asynccontextmanager
async def _running_simulator(
    scenario: Scenario,
    host: str,
    port: int,
    control_port: int | None,
    record_path: Path | None,
    log: SimLog | None,
    on_crash: Callable[[str], None] | None,
    local: tuple[str | None, str],
) -> AsyncIterator[HemsSimulator]:
    from .control import serve_control  # control imports this module for typing only

    sim = HemsSimulator(
        scenario,
        log=log or SimLog(),
        record_path=record_path,
        on_crash=on_crash,
        local_ski=local[0],
        local_ski_problem=local[1],
    )
    try:
        async with trio.open_nursery() as nursery:
            await sim._start(nursery, host=host, port=port)
            if control_port is not None:
                listeners = await nursery.start(serve_control, sim, control_port, host)
                sim.control_port = int(listeners[0].socket.getsockname()[1])
            try:
                yield sim
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Crossing into asyncio from a cancelled scope fails at once: shield, but bounded.
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            await sim._shutdown()
