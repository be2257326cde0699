"""The simulated energy guard (control box / HEMS) on the far side of the sidecar.

It becomes visible (mDNS) after the sidecar service runs, connects (at once, or once its SKI
is trusted when the scenario says so), sends heartbeats, and plays the scenario's timed
actions; live control calls the same methods. Everything it does reaches the client only
through the simulated sidecar, as events and data, exactly like a real peer's SPINE messages.
"""

from __future__ import annotations

import random

import trio

from eebus_bridge.ski import is_valid_ski, normalize_ski

from .logs import SimLog
from .scenario import ActionSpec, Scenario
from .sidecar import (
    NS_PER_S,
    Lifecycle,
    PendingWrite,
    RemoteService,
    SimulatedSidecar,
    SimulatorError,
    remote_service,
)


class SimulatedEnergyGuard:
    def __init__(
        self, scenario: Scenario, sidecar: SimulatedSidecar, log: SimLog, rng: random.Random
    ) -> None:
        self._scenario = scenario
        self._spec = scenario.eg
        self._sidecar = sidecar
        self._log = log
        self._rng = rng
        self.ski = scenario.eg.ski
        self.visible = False
        self.connected = False
        self.heartbeat_enabled = True
        self.msg_counter = 0  # SPINE msg counter of the EG's last message
        self.first_connected = trio.Event()
        self.connected_at: float | None = None
        self.cs_heartbeats_seen = 0
        self._wants_connection = False

    # ------------------------------------------------------------------ identity

    def remote_service(self) -> RemoteService:
        return remote_service(self._spec, self.ski)

    @property
    def entity(self) -> tuple[int, ...]:
        return self._spec.entity_address

    def _next_counter(self) -> int:
        self.msg_counter += 1
        return self.msg_counter

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        """Appear on mDNS and connect (or wait for trust, if the scenario requires it)."""
        if self._sidecar.state is not Lifecycle.RUNNING:
            raise SimulatorError("the sidecar service is not running (StartService)")
        if self.connected:
            return
        self._wants_connection = True
        if not self.visible:
            self.visible = True
            self._sidecar.eg_visible(self.remote_service())
        if self._spec.requires_trust and self.ski not in self._sidecar.trusted_skis:
            self._log.info(f"EG {self.ski} waits for trust (RegisterRemoteSki)")
            return
        self._complete_connection()

    def on_trusted(self, ski: str) -> None:
        if (
            ski == self.ski
            and self._wants_connection
            and not self.connected
            and self._sidecar.state is Lifecycle.RUNNING
        ):
            self._complete_connection()

    def _complete_connection(self) -> None:
        self.connected = True
        self._wants_connection = False
        self._next_counter()  # the heartbeat the sidecar reads while connecting
        self.connected_at = trio.current_time()
        self._sidecar.eg_connected(self.ski, self.entity, self._spec.clock_skew_s)
        self.first_connected.set()

    def disconnect(self) -> None:
        if not (self.connected or self.visible):
            raise SimulatorError("the EG is not connected")
        self.connected = False
        self._wants_connection = False
        self.visible = False
        self._sidecar.eg_gone(self.ski)
        self._sidecar.eg_disconnected(self.ski)

    def reconnect(self) -> None:
        """Drop the connection if there is one, then connect again."""
        if self.connected or self.visible:
            self.disconnect()
        self.connect()

    def on_service_stopped(self) -> None:
        # The service shut down: connections and mDNS are gone, no REMOVED goes out.
        self.connected = False
        self.visible = False
        self._wants_connection = False
        self._sidecar.visible.pop(self.ski, None)

    def set_ski(self, raw_ski: str) -> None:
        if not is_valid_ski(raw_ski):
            raise SimulatorError(f"{raw_ski!r} is not an SKI (40 hex characters)")
        ski = normalize_ski(raw_ski)
        if ski == self.ski:
            return
        was_present = self.connected or self.visible
        if was_present:
            self.disconnect()
        self._log.info(f"EG SKI changed from {self.ski} to {ski}")
        self.ski = ski
        if was_present:
            self.connect()

    # ------------------------------------------------------------------ messages

    def _require_connection(self) -> None:
        if not self.connected:
            raise SimulatorError("the EG is not connected")

    def send_heartbeat(self) -> None:
        self._require_connection()
        self._next_counter()
        self._sidecar.eg_heartbeat(self.ski, self.entity, self._spec.clock_skew_s)

    def stop_heartbeat(self) -> None:
        self.heartbeat_enabled = False
        self._log.info(f"EG {self.ski} stops its heartbeat")

    def start_heartbeat(self) -> None:
        self.heartbeat_enabled = True
        self._log.info(f"EG {self.ski} resumes its heartbeat")
        if self.connected:
            self.send_heartbeat()

    def send_limit(self, value: float, *, active: bool = True, duration_s: float = 0.0) -> int:
        """Write the consumption limit; returns the write's msg counter."""
        self._require_connection()
        counter = self._next_counter()
        self._sidecar.eg_write_limit(
            ski=self.ski,
            entity=self.entity,
            msg_counter=counter,
            value=float(value),
            is_active=active,
            duration_ns=round(duration_s * NS_PER_S),
        )
        return counter

    def write_failsafe_limit(self, value: float) -> None:
        self._require_connection()
        self._next_counter()
        self._sidecar.eg_write_failsafe_limit(self.ski, self.entity, float(value))

    def write_failsafe_duration(self, duration_s: float) -> None:
        self._require_connection()
        self._next_counter()
        self._sidecar.eg_write_failsafe_duration(
            self.ski, self.entity, round(duration_s * NS_PER_S)
        )

    def note_answer(self, write: PendingWrite, approve: bool, reason: str) -> None:
        if write.remote_ski == self.ski:
            verdict = "accepted" if approve else f"rejected: {reason}"
            self._log.debug(f"EG {self.ski}: write {write.msg_counter} {verdict}")

    def note_cs_heartbeat(self) -> None:
        if self.connected:
            self.cs_heartbeats_seen += 1

    # ------------------------------------------------------------------ scenario

    async def run(self) -> None:
        """Connect after StartService + connect delay, then heartbeats and timed actions."""
        await self._sidecar.running.wait()
        await trio.sleep(self._scenario.scaled(self._spec.connect_delay_s))
        if self._sidecar.state is not Lifecycle.RUNNING:
            return
        self.connect()
        await self.first_connected.wait()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats, started)
            for action in self._scenario.actions:
                nursery.start_soon(self._timeline, action, started)

    async def _heartbeats(self, started: float) -> None:
        period = self._scenario.scaled(self._spec.heartbeat_period_s)
        beat = 1
        while True:
            await trio.sleep_until(started + beat * period)
            beat += 1
            if self.connected and self.heartbeat_enabled:
                self.send_heartbeat()

    async def _timeline(self, action: ActionSpec, started: float) -> None:
        first = started + self._scenario.scaled(action.at_s)
        done = 0
        while True:
            await trio.sleep_until(first + done * self._scenario.scaled(action.every_s or 0.0))
            try:
                self.perform(action)
            except SimulatorError as exc:
                self._log.warn(f"Scenario action {action.action} skipped: {exc}")
            done += 1
            if action.every_s is None or (action.count is not None and done >= action.count):
                return

    def perform(self, action: ActionSpec) -> None:
        name = action.action
        if name == "send_limit":
            if action.value is not None:
                value = action.value
            else:
                low = action.value_min if action.value_min is not None else 0.0
                high = action.value_max if action.value_max is not None else low
                value = float(round(self._rng.uniform(low, high)))
            self.send_limit(value, active=action.active, duration_s=action.duration_s or 0.0)
        elif name == "write_failsafe_limit":
            self.write_failsafe_limit(action.value or 0.0)
        elif name == "write_failsafe_duration":
            self.write_failsafe_duration(action.duration_s or 0.0)
        elif name == "stop_heartbeat":
            self.stop_heartbeat()
        elif name == "start_heartbeat":
            self.start_heartbeat()
        elif name == "send_heartbeat":
            self.send_heartbeat()
        elif name == "disconnect":
            self.disconnect()
        elif name == "reconnect":
            self.reconnect()
        elif name == "set_ski":
            self.set_ski(action.ski or "")
        else:
            raise SimulatorError(f"unknown action {name!r}")
