"""The managed sidecar process: exact flags, log forwarding, and killing its whole group."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest
import trio

from eebus_bridge.sidecar_process import SidecarExited, SidecarProcess, parse_sidecar_line
from tests._util import wait_until


@pytest.mark.parametrize(
    ("line", "level", "message"),
    [
        ("2026-11-27 10:00:00 INFO Service started", logging.INFO, "Service started"),
        ("2026-11-27 10:00:00 WARN no mDNS", logging.WARNING, "no mDNS"),
        ("2026-11-27 10:00:00 WARNING no mDNS", logging.WARNING, "no mDNS"),
        ("2026-11-27 10:00:00 ERROR boom", logging.ERROR, "boom"),
        ("2026-11-27 10:00:00 FATAL dead", logging.CRITICAL, "dead"),
        ("2026-11-27 10:00:00 TRACE spine", logging.DEBUG, "spine"),
        ("2026-11-27 10:00:00 DEBUG x", logging.DEBUG, "x"),
        ("panic: runtime error", logging.INFO, "panic: runtime error"),
        ("2026-11-27 10:00:00 LOUD odd level", logging.INFO, "2026-11-27 10:00:00 LOUD odd level"),
    ],
)
def test_sidecar_line_levels(line: str, level: int, message: str) -> None:
    assert parse_sidecar_line(line) == (level, message)


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake_sidecar"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_exit_of_the_sidecar_is_a_failure_and_its_lines_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = _script(
        tmp_path,
        """
        echo "2026-11-27 10:00:00 WARN args: $*"
        echo "unstructured line"
        exit 3
        """,
    )
    caplog.set_level(logging.DEBUG)
    command = [str(script), "-port", "1234", "-certificate-path", str(tmp_path / "c/cert")]
    with pytest.raises(SidecarExited, match="status 3"):
        await SidecarProcess(command).run()
    forwarded = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "eebus_grpc_api"]
    assert (logging.WARNING, f"args: -port 1234 -certificate-path {tmp_path}/c/cert") in forwarded
    assert (logging.INFO, "unstructured line") in forwarded
    assert (tmp_path / "c").is_dir()  # the certificate folder is created for the sidecar


async def test_cancel_kills_a_sigterm_ignoring_sidecar_and_its_grandchildren(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = _script(
        tmp_path,
        f"""
        trap '' TERM
        sh -c 'trap "" TERM; echo $$ > {pid_file}; while :; do sleep 1; done' &
        echo "2026-11-27 10:00:00 INFO running"
        while :; do sleep 1; done
        """,
    )
    process = SidecarProcess([str(script)], grace_s=0.3)
    async with trio.open_nursery() as nursery:
        pid = await nursery.start(process.run)
        await wait_until(lambda: pid_file.exists() and bool(pid_file.read_text().strip()))
        grandchild = int(pid_file.read_text())
        assert _alive(pid)
        assert _alive(grandchild)
        began = trio.current_time()
        nursery.cancel_scope.cancel()
    took = trio.current_time() - began
    assert took < 1.5  # SIGTERM ignored -> SIGKILL after the grace period
    await wait_until(lambda: not _alive(grandchild), limit_s=2)
    assert not _alive(pid)
