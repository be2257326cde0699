"""The managed sidecar process: start eebus_grpc_api, forward its log lines, stop its group.

The real sidecar ignores SIGTERM once its EEBUS service runs (spec/wire.md), so stopping is
SIGTERM to the whole process group, at most `grace_s` to exit, then SIGKILL to the group. It runs
in its own session so that grandchildren die with it.

If the bridge itself is SIGKILLed, nothing here can stop the sidecar; under systemd the default
KillMode=control-group ends it with the bridge's cgroup. (PR_SET_PDEATHSIG is no help: Trio forks
from a worker thread, and the signal fires when that thread, not the process, exits.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from eebus_bridge.config import Config

log = logging.getLogger("eebus_bridge.sidecar")
sidecar_output = logging.getLogger("eebus_grpc_api")

# "YYYY-MM-DD HH:MM:SS LEVEL message" (spec/wire.md); other lines exist too.
_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)? +([A-Z]+) +(.*)$")
_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
}


# Process groups of sidecars started and not yet stopped: the runtime's exit deadline SIGKILLs
# them if a shutdown overruns (it runs on another thread, so it only ever reads a copy).
_running_groups: set[int] = set()


def kill_running_sidecars() -> None:
    """SIGKILL every sidecar process group still running (the last resort of a shutdown)."""
    for pgid in tuple(_running_groups):
        _signal_group(pgid, signal.SIGKILL)


class SidecarExited(Exception):
    """The sidecar process ended: a failure of the supervised group."""


def parse_sidecar_line(line: str) -> tuple[int, str]:
    """Map one sidecar output line to (log level, message); unknown shapes log at INFO."""
    match = _LINE.match(line)
    if match and match.group(1) in _LEVELS:
        return _LEVELS[match.group(1)], match.group(2)
    return logging.INFO, line


def sidecar_command(config: Config) -> list[str]:
    """Exactly the flags of the real sidecar (spec/wire.md)."""
    return [
        config.sidecar.binary,
        "-port",
        str(config.eebus.grpc_port),
        "-certificate-path",
        str(config.sidecar.certificate),
        "-private-key-path",
        str(config.sidecar.private_key),
    ]


class SidecarProcess:
    """One run of the sidecar binary; `run()` returns only by raising or being cancelled."""

    def __init__(self, command: Sequence[str], *, grace_s: float = 1.0) -> None:
        self.command = list(command)
        self.grace_s = grace_s

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        # Folders for the certificate/key must exist (the sidecar creates the files).
        for flag in ("-certificate-path", "-private-key-path"):
            if flag in self.command:
                Path(self.command[self.command.index(flag) + 1]).parent.mkdir(
                    parents=True, exist_ok=True
                )
        process = await trio.lowlevel.open_process(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _running_groups.add(process.pid)
        log.info("sidecar started (pid %d): %s", process.pid, " ".join(self.command))
        task_status.started(process.pid)
        try:
            output_done = trio.Event()
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None
                nursery.start_soon(_forward_lines, process.stdout, output_done)
                code = await process.wait()
                # Let the child's exit end the run, not EOF: a grandchild may hold stdout open.
                with trio.move_on_after(0.2):
                    await output_done.wait()
                nursery.cancel_scope.cancel()
            raise SidecarExited(f"sidecar exited with status {code}")
        finally:
            with trio.CancelScope(shield=True):
                await _stop_group(process, self.grace_s)


async def _forward_lines(stream: trio.abc.ReceiveStream, done: trio.Event) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            _log_line(raw)
    if buffer:
        _log_line(buffer)
    done.set()


def _log_line(raw: bytes) -> None:
    line = raw.decode("utf-8", "replace").rstrip("\r")
    if line:
        level, message = parse_sidecar_line(line)
        sidecar_output.log(level, "%s", message)


async def _stop_group(process: trio.Process, grace_s: float) -> None:
    """SIGTERM the process group, wait up to grace_s, then SIGKILL the group."""
    pgid = process.pid  # leader of its own session/group
    if process.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(grace_s):
            await process.wait()
    # Even after the leader exited, grandchildren may remain in the group.
    _signal_group(pgid, signal.SIGKILL)
    if process.returncode is None:
        await process.wait()
    _running_groups.discard(pgid)
    log.info("sidecar stopped (pid %d, status %s)", process.pid, process.returncode)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
