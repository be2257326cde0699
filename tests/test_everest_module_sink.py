"""The module's everestpy sink and log handler, in-process with plain callables for everestpy."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio

from eebus_bridge.activity import Activity, ActivityFeed
from eebus_bridge.backoff import BackoffPolicy
from eebus_bridge.everest_module import EverestCommandSink, EverestLogHandler
from eebus_bridge.publication import LatestValue, Publication
from tests._publications import failsafe, limited, unlimited
from tests._util import wait_until

FAST = BackoffPolicy(initial_s=0.01, maximum_s=0.05, healthy_s=1.0, jitter=0.0)


class RecordingCall:
    """Stands in for `call_command`: records each object; may block or fail on demand."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.release.set()
        self.failures = 0
        self.entered = threading.Event()

    def __call__(self, limits: dict[str, Any]) -> None:
        self.entered.set()
        self.release.wait(timeout=30)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("callee failed")
        self.sent.append(limits)


async def _run_sink(
    call: Callable[[dict[str, Any]], None],
    ready: threading.Event,
    latest: LatestValue[Publication],
    nursery: trio.Nursery,
    activity: ActivityFeed | None = None,
) -> None:
    sink = EverestCommandSink("grid_connection_point", call, ready, backoff=FAST, activity=activity)
    nursery.start_soon(sink.run, latest)


async def test_nothing_is_sent_before_ready_then_the_current_limit() -> None:
    call, ready, latest = RecordingCall(), threading.Event(), LatestValue[Publication]()
    latest.set(failsafe())
    async with trio.open_nursery() as nursery:
        await _run_sink(call, ready, latest, nursery)
        latest.set(limited(100.0))
        await trio.sleep(0.3)  # the sink is running; it must hold back
        assert call.sent == []
        ready.set()
        await wait_until(lambda: len(call.sent) == 1)
        nursery.cancel_scope.cancel()
    assert call.sent == [limited(100.0).external_limits]


async def test_limits_published_while_a_call_blocks_are_skipped_but_the_newest() -> None:
    call, ready, latest = RecordingCall(), threading.Event(), LatestValue[Publication]()
    ready.set()
    call.release.clear()
    latest.set(failsafe())
    async with trio.open_nursery() as nursery:
        await _run_sink(call, ready, latest, nursery)
        await trio.to_thread.run_sync(call.entered.wait, 10)
        latest.set(limited(100.0))
        latest.set(limited(200.0))
        latest.set(unlimited())
        call.release.set()
        await wait_until(lambda: len(call.sent) == 2)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert call.sent == [failsafe().external_limits, unlimited().external_limits]


async def test_a_failed_call_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    call, ready, latest = RecordingCall(), threading.Event(), LatestValue[Publication]()
    ready.set()
    call.failures = 2
    latest.set(limited(100.0))
    activity = ActivityFeed()
    seen: list[Activity] = []
    activity.subscribe(seen.append)
    async with trio.open_nursery() as nursery:
        await _run_sink(call, ready, latest, nursery, activity)
        # The delivery is recorded once the worker thread's call has returned to Trio, which can
        # be a moment after `call.sent` shows it: wait for the record, not for the call.
        await wait_until(lambda: any(a.kind == "delivery" and a.fields["ok"] for a in seen))
        nursery.cancel_scope.cancel()
    assert len(call.sent) == 1
    failures = [r for r in caplog.records if "set_external_limits failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.levelno == logging.ERROR for r in failures)
    assert "callee failed" in failures[0].getMessage()
    name = "everest-module[grid_connection_point]"
    assert [(a.kind, a.fields) for a in seen] == [
        ("sink", {"sink": name, "event": "connected"}),
        ("delivery", {"sink": name, "version": 1, "ok": False, "error": "callee failed"}),
        ("delivery", {"sink": name, "version": 1, "ok": False, "error": "callee failed"}),
        ("delivery", {"sink": name, "version": 1, "ok": True, "error": None}),
    ]


async def test_an_invalid_object_is_never_sent(caplog: pytest.LogCaptureFixture) -> None:
    call, ready, latest = RecordingCall(), threading.Event(), LatestValue[Publication]()
    ready.set()
    broken = limited(100.0)
    broken_limits = dict(broken.external_limits)
    del broken_limits["schedule_setpoints"]
    latest.set(Publication(broken.time, broken.state, 100.0, None, broken_limits))
    async with trio.open_nursery() as nursery:
        await _run_sink(call, ready, latest, nursery)
        await wait_until(lambda: "not sending invalid ExternalLimits" in caplog.text)
        latest.set(unlimited())
        await wait_until(lambda: len(call.sent) == 1)
        nursery.cancel_scope.cancel()
    assert call.sent == [unlimited().external_limits]
    assert "'schedule_setpoints' is a required property" in caplog.text


class RecordingEverestLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _add(self, level: str) -> Callable[[str], None]:
        return lambda message: self.lines.append((level, message))

    def __getattr__(self, level: str) -> Callable[[str], None]:
        if level in ("debug", "info", "warning", "error", "critical"):
            return self._add(level)
        raise AttributeError(level)


def test_log_records_map_to_everestpys_functions() -> None:
    everest_log = RecordingEverestLog()
    logger = logging.getLogger("eebus_bridge.test_everest_log")
    sidecar = logging.getLogger("eebus_grpc_api")
    handler = EverestLogHandler(everest_log)
    for each in (logger, sidecar):
        each.addHandler(handler)
        each.setLevel(logging.DEBUG)
    try:
        logger.debug("d")
        logger.info("limit %d W", 100, extra={"fields": {"state": "Limited"}})
        logger.warning("w")
        logger.error("e")
        logger.critical("c")
        sidecar.warning("Remote SKI connected")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        for each in (logger, sidecar):
            each.removeHandler(handler)
            each.setLevel(logging.NOTSET)
    name = "eebus_bridge.test_everest_log"
    assert everest_log.lines[:6] == [
        ("debug", f"{name}: d"),
        ("info", f"{name}: limit 100 W"),  # text lines carry no key=value tail (issue 13.5)
        ("warning", f"{name}: w"),
        ("error", f"{name}: e"),
        ("critical", f"{name}: c"),
        ("warning", "eebus_grpc_api: Remote SKI connected"),
    ]
    level, message = everest_log.lines[6]
    assert level == "error"
    assert message.startswith(f"{name}: failed\nTraceback")
    assert "ValueError: boom" in message
