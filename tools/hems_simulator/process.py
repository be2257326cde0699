"""Run the simulator as a separate process, the way the bridge runs the real sidecar.

Used by the pytest fixtures (tests/_sim_fixtures.py) and usable from any Trio code: it starts
tools/eebus_grpc_api_sim with the real sidecar's flags plus -control-port 0 and -record FILE,
waits until it serves, and gives a handle to control it, read its records and stop it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from .control import ControlClient
from .errors import unwrapped_exception_groups

REPO_ROOT = Path(__file__).resolve().parents[2]
SIM_EXECUTABLE = REPO_ROOT / "tools" / "eebus_grpc_api_sim"
_CONTROL_LINE = re.compile(r"Control interface listening on [^:\s]+:(\d+)")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SimulatorProcess:
    """Handle of a simulator subprocess (its own session / process group)."""

    def __init__(
        self,
        process: trio.Process,
        *,
        port: int,
        cert_path: Path,
        key_path: Path,
        record_path: Path | None,
        args: list[str],
    ) -> None:
        self.process = process
        self.port = port
        self.cert_path = cert_path
        self.key_path = key_path
        self.record_path = record_path
        self.args = args
        self.control_port: int | None = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._output_changed = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def control(self) -> ControlClient:
        if self.control_port is None:
            raise RuntimeError("this simulator process has no control interface")
        return ControlClient(self.control_port)

    # ------------------------------------------------------------------ output

    async def _pump(self, stream: trio.abc.ReceiveStream, lines: list[str]) -> None:
        partial = b""
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                chunk = b""
            if not chunk:
                if partial:
                    lines.append(partial.decode(errors="replace"))
                    self._notify()
                return
            partial += chunk
            *complete, partial = partial.split(b"\n")
            if complete:
                lines.extend(line.decode(errors="replace") for line in complete)
                self._notify()

    def _notify(self) -> None:
        self._output_changed.set()
        self._output_changed = trio.Event()

    async def wait_for_line(
        self,
        pattern: str | re.Pattern[str],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's own deadline
        stream: str = "stdout",
    ) -> re.Match[str]:
        """The first output line (from the start) that matches pattern (re.search)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        lines = self.stdout_lines if stream == "stdout" else self.stderr_lines
        position = 0
        with trio.fail_after(timeout):
            while True:
                while position < len(lines):
                    match = regex.search(lines[position])
                    position += 1
                    if match is not None:
                        return match
                await self._output_changed.wait()

    # ------------------------------------------------------------------ records

    def records(self, kind: str | None = "rpc") -> list[dict[str, Any]]:
        """Entries of the -record file (kind "rpc", "approval", "event", or None for all)."""
        if self.record_path is None or not self.record_path.exists():
            return []
        entries = []
        for line in self.record_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if kind is None or entry.get("kind") == kind:
                entries.append(entry)
        return entries

    async def wait_for_record(
        self,
        method: str | None = None,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        kind: str = "rpc",
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's own deadline
        start: int = 0,
        poll_interval: float = 0.02,
    ) -> dict[str, Any]:
        """First record of `kind` at position >= start matching method and predicate.
        The file is re-read every poll_interval; raises trio.TooSlowError on timeout."""
        with trio.fail_after(timeout):
            while True:
                for entry in self.records(kind)[start:]:
                    if method is not None and entry.get("method") != method:
                        continue
                    if predicate is None or predicate(entry):
                        return entry
                await trio.sleep(poll_interval)

    # ------------------------------------------------------------------ signals

    def signal_group(self, signum: int) -> None:
        """Send a signal to the simulator's whole process group."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    async def wait(self) -> int:
        """Wait for the exit status (wrap in trio.fail_after to bound it)."""
        return await self.process.wait()

    async def stop(self, *, grace: float = 1.0) -> int:
        """SIGTERM, up to `grace` seconds, then SIGKILL (whole process group)."""
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.process.wait()
        if self.process.returncode is None:
            self.signal_group(signal.SIGKILL)
            await self.process.wait()
        else:
            self.signal_group(signal.SIGKILL)  # leftovers in the group, if any
        return await self.process.wait()


async def terminate(process: trio.Process, *, grace: float) -> int:
    """SIGTERM to one child process, up to `grace` seconds, then SIGKILL; its exit status.
    Shielded: also for a caller's cleanup in a cancelled scope. (The simulator itself is
    stopped with its whole process group, `SimulatorProcess.stop`.)"""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            process.kill()
        return await process.wait()


def simulator_args(
    *,
    port: int,
    cert_path: Path,
    key_path: Path,
    scenario: str | Path | None = "controlbox",
    control: bool = True,
    record_path: Path | None = None,
    extra_args: Sequence[str] = (),
    executable: Path | str = SIM_EXECUTABLE,
) -> list[str]:
    args = [
        str(executable),
        "-port",
        str(port),
        "-certificate-path",
        str(cert_path),
        "-private-key-path",
        str(key_path),
    ]
    if scenario is not None:
        args += ["-scenario", str(scenario)]
    if control:
        args += ["-control-port", "0"]
    if record_path is not None:
        args += ["-record", str(record_path)]
    return args + list(extra_args)


@asynccontextmanager
async def open_simulator_process(
    workdir: Path,
    *,
    scenario: str | Path | None = "controlbox",
    port: int | None = None,
    control: bool = True,
    record: bool = True,
    extra_args: Sequence[str] = (),
    executable: Path | str = SIM_EXECUTABLE,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[SimulatorProcess]:
    """Start the simulator CLI, wait until it serves, yield a handle, stop it at exit.

    Files go to workdir (sim-cert.pem, sim-key.pem, sim-record.jsonl). Ready means: the
    control interface logged its port (control=True) or the gRPC port accepts connections.
    """
    port = free_tcp_port() if port is None else port
    cert_path = workdir / "sim-cert.pem"
    key_path = workdir / "sim-key.pem"
    record_path = workdir / "sim-record.jsonl" if record else None
    args = simulator_args(
        port=port,
        cert_path=cert_path,
        key_path=key_path,
        scenario=scenario,
        control=control,
        record_path=record_path,
        extra_args=extra_args,
        executable=executable,
    )
    process = await trio.lowlevel.open_process(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(env) if env is not None else None,
    )
    handle = SimulatorProcess(
        process,
        port=port,
        cert_path=cert_path,
        key_path=key_path,
        record_path=record_path,
        args=args,
    )
    with unwrapped_exception_groups():
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(handle._pump, process.stdout, handle.stdout_lines)
            nursery.start_soon(handle._pump, process.stderr, handle.stderr_lines)
            try:
                with trio.fail_after(startup_timeout):
                    await _wait_ready(handle, control=control)
                yield handle
            finally:
                with trio.CancelScope(shield=True):
                    await handle.stop()
                nursery.cancel_scope.cancel()


async def _wait_ready(handle: SimulatorProcess, *, control: bool) -> None:
    async def exited() -> None:
        await handle.process.wait()
        tail = "\n".join(handle.stdout_lines[-10:] + handle.stderr_lines[-10:])
        raise RuntimeError(f"simulator exited with {handle.process.returncode}:\n{tail}")

    async def ready(cancel: trio.CancelScope) -> None:
        if control:
            match = await handle.wait_for_line(_CONTROL_LINE, timeout=math.inf)
            handle.control_port = int(match.group(1))
        else:
            await wait_port_open(handle.port)
        cancel.cancel()

    with unwrapped_exception_groups():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exited)
            nursery.start_soon(ready, nursery.cancel_scope)


async def wait_port_open(port: int, *, host: str = "127.0.0.1") -> float:
    """Wait until a TCP connect to host:port succeeds (bound it with trio.fail_after);
    returns how long that took on the Trio clock."""
    started = trio.current_time()
    while True:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            await trio.sleep(0.005)
            continue
        await stream.aclose()
        return trio.current_time() - started
