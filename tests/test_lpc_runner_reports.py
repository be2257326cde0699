"""An approval's reports wait until its answers are on their way (lpc_runner.py, `apply`).

The real LpcRunner with its engine; the activity feed and the log are what is looked at. The
answer itself is decided (and returned) at once; its log line and the input's activity records
follow `answers_sent()`, or at the latest the next input, so reports keep the order of inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from eebus_bridge.activity import Activity, ActivityFeed
from eebus_bridge.lpc import Heartbeat, LimitUpdated, SidecarLimit, WriteApprovalRequired
from eebus_bridge.lpc_runner import LpcRunner
from eebus_bridge.publication import LatestValue
from tests._bridge_fixtures import EG_SKI, make_config

LIMIT = SidecarLimit(value=4200.0, is_active=True, duration_s=0.0)


def _runner(tmp_path: Path) -> tuple[LpcRunner, list[Activity]]:
    seen: list[Activity] = []
    feed = ActivityFeed()
    feed.subscribe(seen.append)
    runner = LpcRunner(make_config(tmp_path, grpc_port=50051), LatestValue(), activity=feed)
    runner.start(None)
    runner.apply(Heartbeat(ski=EG_SKI))
    seen.clear()  # Init's publication, the EG's arrival
    return runner, seen


def _approval_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "approved" in r.getMessage()]


async def test_the_answer_comes_at_once_its_reports_once_it_is_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eebus_bridge.lpc")
    runner, seen = _runner(tmp_path)
    answers = runner.apply(WriteApprovalRequired(ski=EG_SKI, pending=((5, LIMIT),)))
    assert [(a.msg_counter, a.approve) for a in answers] == [(5, True)]
    assert not [a for a in seen if a.kind == "write"]
    assert not _approval_lines(caplog)

    runner.answers_sent()
    writes = [a.fields for a in seen if a.kind == "write"]
    assert [(w["msg_counter"], w["value_W"], w["approved"]) for w in writes] == [(5, 4200.0, True)]
    assert _approval_lines(caplog) == [f"write 5 from {EG_SKI} approved: 4200 W with no end"]

    runner.answers_sent()  # nothing held any more: no second record, no second line
    assert len([a for a in seen if a.kind == "write"]) == 1
    assert len(_approval_lines(caplog)) == 1


async def test_held_reports_come_before_the_next_inputs_own(tmp_path: Path) -> None:
    runner, seen = _runner(tmp_path)
    runner.apply(WriteApprovalRequired(ski=EG_SKI, pending=((6, LIMIT),)))
    # The caller never says the answer was sent (a lane cancelled mid-call, say): the next
    # input makes the held reports first.
    runner.apply(LimitUpdated(ski=EG_SKI, limit=LIMIT))
    kinds = [a.kind for a in seen if a.kind in ("write", "publication")]
    assert kinds == ["write", "publication"]
    assert seen[[a.kind for a in seen].index("publication")].fields["limit_W"] == 4200.0


async def test_inputs_without_answers_report_at_once(tmp_path: Path) -> None:
    runner, seen = _runner(tmp_path)
    assert runner.apply(LimitUpdated(ski=EG_SKI, limit=LIMIT)) == []
    assert [a.kind for a in seen].count("publication") == 1  # no answers_sent() needed


async def test_send_routes_the_answers_and_reports_them(tmp_path: Path) -> None:
    runner, seen = _runner(tmp_path)
    actions, received = trio.open_memory_channel[object](10)
    runner.attach_sidecar(actions)  # type: ignore[arg-type]
    await runner.send(WriteApprovalRequired(ski=EG_SKI, pending=((8, LIMIT),)))
    assert received.receive_nowait().msg_counter == 8  # type: ignore[attr-defined]
    assert [a.fields["msg_counter"] for a in seen if a.kind == "write"] == [8]
