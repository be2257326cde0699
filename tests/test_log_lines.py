"""Log lines that read well (issue 13.5): plain sentences in text mode, structured fields in JSON.

The lines come from the real lpc task (LpcRunner with its engine) with an injected wall clock,
logged through the real handler set up by `setup_logging`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import trio
import trio.testing

from eebus_bridge.logs import setup_logging
from eebus_bridge.lpc import Heartbeat, LimitUpdated, SidecarLimit, WriteApprovalRequired
from eebus_bridge.lpc_runner import LpcRunner
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.wording import format_duration
from tests._bridge_fixtures import EG_SKI, make_config

START = datetime(2026, 5, 7, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3723, "1 h 2 min 3 s"),
        (45, "45 s"),
        (0.25, "0.25 s"),
        (7200, "2 h"),
        (60, "1 min"),
        (3600.5, "1 h 0.5 s"),
        (0, "0 s"),
        (-90, "-1 min 30 s"),
    ],
)
def test_durations_read_like_people_write_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@asynccontextmanager
async def running_runner(
    tmp_path: Path,
) -> AsyncIterator[tuple[LpcRunner, LatestValue[Publication]]]:
    publications: LatestValue[Publication] = LatestValue()
    runner = LpcRunner(
        make_config(tmp_path, grpc_port=50051),
        publications,
        wall_clock=lambda: START + timedelta(seconds=trio.current_time()),
    )
    runner.start(None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        yield runner, publications
        nursery.cancel_scope.cancel()


async def _approve_a_timed_limit(tmp_path: Path) -> None:
    async with running_runner(tmp_path) as (runner, publications):
        await runner.send(Heartbeat(ski=EG_SKI))
        pending = ((2, SidecarLimit(value=100.0, is_active=True, duration_s=3723.0)),)
        await runner.send(WriteApprovalRequired(ski=EG_SKI, pending=pending))
        await runner.send(
            WriteApprovalRequired(
                ski=EG_SKI, pending=((3, SidecarLimit(-5.0, is_active=True, duration_s=0.0)),)
            )
        )
        await runner.send(LimitUpdated(ski=EG_SKI, limit=pending[0][1]))
        await publications.wait_newer(1)


def _messages(err: str, fmt: Literal["text", "json"]) -> list[Any]:
    lines = [line for line in err.splitlines() if line]
    if fmt == "json":
        return [json.loads(line) for line in lines]
    prefix = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z]+ [\w.]+: ")
    assert all(prefix.match(line) for line in lines), lines
    return [prefix.sub("", line) for line in lines]


async def test_text_lines_are_plain_sentences(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    root_logger: logging.Logger,
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup_logging("info", "text")
    await _approve_a_timed_limit(tmp_path)

    lines = _messages(capsys.readouterr().err, "text")
    assert lines == [
        "published Init: 4200 W",
        f"write 2 from {EG_SKI} approved: 100 W for 1 h 2 min 3 s",
        f"write 3 from {EG_SKI} denied: -5 W with no end "
        "(LPC-001: Active Power Consumption Limit must be >= 0 W (got -5.0))",
        "state Init -> Limited (LPC-904)",
        "published Limited: 100 W until 2026-05-07T11:02:03+00:00",
    ]
    for line in lines:
        assert "=" not in line.replace(">=", "")  # no key=value tail
        assert not re.search(r"(^|\s)-($|\s)", line)  # no placeholder


async def test_json_lines_carry_the_same_sentence_and_the_fields(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    root_logger: logging.Logger,
    autojump_clock: trio.testing.MockClock,
) -> None:
    setup_logging("info", "json")
    await _approve_a_timed_limit(tmp_path)

    records = _messages(capsys.readouterr().err, "json")
    by_message = {record["message"]: record for record in records}
    approved = by_message[f"write 2 from {EG_SKI} approved: 100 W for 1 h 2 min 3 s"]
    assert approved | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "eebus_bridge.lpc",
        "message": f"write 2 from {EG_SKI} approved: 100 W for 1 h 2 min 3 s",
        "msg_counter": 2,
        "ski": EG_SKI,
        "approved": True,
        "reason": "",
        "value_W": 100.0,
        "active": True,
        "duration_s": 3723.0,
    }
    published = by_message["published Limited: 100 W until 2026-05-07T11:02:03+00:00"]
    assert published["state"] == "Limited"
    assert published["limit_W"] == 100.0
    assert published["end_time"] == "2026-05-07T11:02:03+00:00"
    change = by_message["state Init -> Limited (LPC-904)"]
    assert (change["old"], change["new"], change["rule"]) == ("Init", "Limited", "LPC-904")
