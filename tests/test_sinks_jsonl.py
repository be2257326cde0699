"""The jsonl sink: exact line format, one flushed line per publication, file or stdout."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from eebus_bridge.backoff import BackoffPolicy
from eebus_bridge.config import JsonlOutput
from eebus_bridge.publication import LatestValue, Publication
from eebus_bridge.sinks import jsonl
from eebus_bridge.sinks.jsonl import JsonlSink, jsonl_line
from tests._broker import LogWatcher
from tests._publications import NOW_TEXT, limited, unlimited


def test_line_format() -> None:
    publication = limited(4200.0)
    assert jsonl_line(publication) == (
        f'{{"time": "{NOW_TEXT}", "state": "Limited", "external_limits": '
        + json.dumps(publication.external_limits)
        + "}"
    )


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _lines_when(path: Path, count: int) -> list[str]:
    # The sink writes from a worker thread; the file itself is all there is to look at, and
    # seeing the line from another handle is what proves it was flushed.
    with trio.fail_after(5):
        while True:
            lines = _read_lines(path)
            if len(lines) >= count:
                return lines
            await trio.sleep(0.01)


async def test_one_flushed_line_per_publication_appended_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "limits.jsonl"
    path.write_text('{"earlier": "run"}\n')
    sink = JsonlSink(JsonlOutput(path=path))
    assert sink.name == f"jsonl[{path}]"
    latest: LatestValue[Publication] = LatestValue()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run, latest)
        latest.set(limited(4200.0))
        lines = await _lines_when(path, 2)
        latest.set(unlimited())
        lines = await _lines_when(path, 3)
        nursery.cancel_scope.cancel()
    assert lines[0] == '{"earlier": "run"}'
    assert json.loads(lines[1]) == {
        "time": NOW_TEXT,
        "state": "Limited",
        "external_limits": limited(4200.0).external_limits,
    }
    assert lines[2] == jsonl_line(unlimited())


async def test_the_current_publication_is_written_at_start(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    latest: LatestValue[Publication] = LatestValue()
    latest.set(limited(1000.0))
    latest.set(limited(2000.0))  # only the newest counts
    async with trio.open_nursery() as nursery:
        nursery.start_soon(JsonlSink(JsonlOutput(path=path)).run, latest)
        lines = await _lines_when(path, 1)
        nursery.cancel_scope.cancel()
    assert lines == [jsonl_line(limited(2000.0))]


async def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = JsonlSink(JsonlOutput(path=None))
    assert sink.name == "jsonl[stdout]"
    latest: LatestValue[Publication] = LatestValue()
    latest.set(unlimited("Unlimited/autonomous"))
    out = ""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run, latest)
        with trio.fail_after(5):
            while not out:  # stdout offers nothing to await
                await trio.sleep(0.01)
                out += capsys.readouterr().out
        nursery.cancel_scope.cancel()
    assert out == jsonl_line(unlimited("Unlimited/autonomous")) + "\n"


async def test_an_unwritable_path_is_logged_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "limits.jsonl"
    latest: LatestValue[Publication] = LatestValue()
    latest.set(limited(4200.0))
    sink = JsonlSink(JsonlOutput(path=path), backoff=BackoffPolicy(initial_s=0.02, maximum_s=0.05))
    with LogWatcher() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run, latest)
            errors = await logs.wait_for(logging.ERROR, "cannot write", count=2)
            assert "retrying in" in errors[0]
            path.parent.mkdir()  # the directory appears: the sink gets going by itself
            lines = await _lines_when(path, 1)
            nursery.cancel_scope.cancel()
    assert lines == [jsonl_line(limited(4200.0))]


def _limit_of(line: str) -> float:
    entry = json.loads(line)["external_limits"]["schedule_import"][0]
    return float(entry["limits_to_root"]["total_power_W"]["value"])


async def test_a_publication_reaches_the_file_without_waiting_for_the_trio_loop(
    tmp_path: Path,
) -> None:
    """The sink watches the cell: the line is handed to its thread inside set(), so it is
    written while the Trio thread is still busy with the rest of the input's work."""
    path = tmp_path / "limits.jsonl"
    latest: LatestValue[Publication] = LatestValue()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(JsonlSink(JsonlOutput(path=path)).run, latest)
        latest.set(limited(1000.0))
        await _lines_when(path, 1)
        latest.set(limited(2000.0))
        # No checkpoint from here on: the sink's task cannot run, only its thread.
        deadline = time.monotonic() + 5
        while len(_read_lines(path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)  # noqa: ASYNC251 - on purpose: blocks Trio, releases the GIL
        lines = _read_lines(path)
        nursery.cancel_scope.cancel()
    assert [_limit_of(line) for line in lines] == [1000.0, 2000.0]


async def test_a_stuck_write_stalls_neither_trio_nor_the_newest_limit(tmp_path: Path) -> None:
    """A FIFO nobody reads: the writer thread blocks in write(); the Trio loop runs on, later
    publications are not queued behind it, and once the reader drains the pipe the newest
    publication is written (the ones in between are skipped)."""
    path = tmp_path / "limits.fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        filler = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        filled = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                filled += os.write(filler, b"x" * 4095 + b"\n")
        os.close(filler)
        latest: LatestValue[Publication] = LatestValue()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(JsonlSink(JsonlOutput(path=path)).run, latest)
            for value in range(1, 201):
                latest.set(limited(float(value)))
                start = trio.current_time()
                await trio.sleep(0.001)
                assert trio.current_time() - start < 1.0, "the Trio loop stalled"
            received = b""
            with trio.fail_after(10):
                while b'"value": 200.0' not in received:
                    await trio.sleep(0.01)
                    with contextlib.suppress(BlockingIOError):
                        received += os.read(reader, 1 << 20)
            nursery.cancel_scope.cancel()
    finally:
        os.close(reader)
    lines = [line for line in received.decode().splitlines() if line.startswith("{")]
    limits = [_limit_of(line) for line in lines]
    assert len(received) > filled
    assert limits == sorted(set(limits)), "lines out of order or repeated"
    assert limits[-1] == 200.0
    assert len(limits) < 20, f"stale publications were queued: {len(limits)} lines"


async def test_a_line_published_just_before_the_shutdown_is_written(tmp_path: Path) -> None:
    path = tmp_path / "limits.jsonl"
    latest: LatestValue[Publication] = LatestValue()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(JsonlSink(JsonlOutput(path=path)).run, latest)
        latest.set(limited(1000.0))
        await _lines_when(path, 1)
        latest.set(limited(3000.0))
        nursery.cancel_scope.cancel()
    assert [_limit_of(line) for line in _read_lines(path)] == [1000.0, 3000.0]
    assert not [t for t in threading.enumerate() if t.name.endswith(" writer") and t.is_alive()]


async def _until_idle(writer: jsonl._LineWriter) -> None:
    with trio.fail_after(5):
        while True:  # polled: the flag is the thread's (a plain bool, set when it waits)
            if writer._idle:
                return
            await trio.sleep(0.001)


async def test_an_idle_writer_has_written_the_line_when_the_hand_over_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over waits (without the GIL) for an idle writer thread to write the line, so
    the line is in the file without waiting for the Trio thread to idle (module docstring)."""
    monkeypatch.setattr(jsonl, "HAND_OVER_WAIT_S", 30.0)  # generous: the mechanism, not speed
    path = tmp_path / "limits.jsonl"
    delivered: list[tuple[int, str | None]] = []
    writer = jsonl._LineWriter(path.open("a", encoding="utf-8"), "test", _append_to(delivered))
    try:
        for version, value in enumerate((1000.0, 2000.0, 3000.0), start=1):
            await _until_idle(writer)
            writer.offer(version, limited(value))
            # No checkpoint since the offer: the line is there already.
            assert [_limit_of(line) for line in _read_lines(path)][-1] == value
    finally:
        await writer.stop()
    assert delivered == [(1, None), (2, None), (3, None)]


def _append_to(delivered: list[tuple[int, str | None]]) -> Callable[[int, str | None], None]:
    return lambda version, error: delivered.append((version, error))


class _StuckStream(io.StringIO):
    """A stream whose writes block until released (a disk that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return super().write(text)

    def close(self) -> None:  # keep the text readable after the writer closed it
        pass


async def test_a_busy_writer_does_not_hold_up_the_next_hand_overs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that does not return costs one hand-over its bounded wait; later ones do not
    wait at all, and the newest publication is written once the stream moves again."""
    monkeypatch.setattr(jsonl, "HAND_OVER_WAIT_S", 2.0)
    stream = _StuckStream()
    delivered: list[tuple[int, str | None]] = []
    writer = jsonl._LineWriter(stream, "test", _append_to(delivered))
    try:
        await _until_idle(writer)
        start = time.monotonic()
        writer.offer(1, limited(1000.0))  # the thread takes it and gets stuck in write()
        waited = time.monotonic() - start
        writer.offer(2, limited(2000.0))
        writer.offer(3, limited(3000.0))
        not_waited = time.monotonic() - start - waited
        assert waited >= 1.9  # it waited for the stuck thread, up to the bound
        assert not_waited < 1.0  # generous: without the rule this would be 4 s
        stream.release.set()
        with trio.fail_after(5):
            while True:  # reported from the thread through run_sync_soon
                if len(delivered) == 2:
                    break
                await trio.sleep(0.01)
    finally:
        stream.release.set()
        await writer.stop()
    assert [_limit_of(line) for line in stream.getvalue().splitlines()] == [1000.0, 3000.0]
    assert delivered == [(1, None), (3, None)]


_CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


@pytest.mark.skipif(
    jsonl.CURRENT_CPU is None or len(_CPUS) < 2, reason="needs Linux and two CPUs to move between"
)
async def test_the_writer_thread_follows_the_trio_threads_cpu(tmp_path: Path) -> None:
    """The writer runs where the Trio thread waits for its line (module docstring): after each
    hand-over it is confined to the CPU the hand-over ran on, also after the Trio thread moved."""
    path = tmp_path / "limits.jsonl"
    writer = jsonl._LineWriter(path.open("a", encoding="utf-8"), "test", lambda *_: None)
    try:
        for version, cpu in enumerate((max(_CPUS), min(_CPUS)), start=1):
            os.sched_setaffinity(0, {cpu})  # this (the Trio) thread only: pid 0 is the caller
            await _until_idle(writer)
            writer.offer(version, limited(1000.0 * version))
            assert os.sched_getaffinity(writer._thread.native_id or -1) == {cpu}
    finally:
        os.sched_setaffinity(0, _CPUS)
        await writer.stop()
    assert [_limit_of(line) for line in _read_lines(path)] == [1000.0, 2000.0]


@pytest.mark.skipif(not _CPUS, reason="needs sched_getaffinity")
async def test_a_refused_cpu_leaves_the_writer_where_it_was_and_the_lines_flowing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CPU the kernel refuses (here one this machine does not have, as a changed cpuset
    could) is logged once at DEBUG; following stops and every line is still written."""
    monkeypatch.setattr(jsonl, "CURRENT_CPU", lambda: 1_000_000)
    path = tmp_path / "limits.jsonl"
    writer = jsonl._LineWriter(path.open("a", encoding="utf-8"), "test", lambda *_: None)
    try:
        with caplog.at_level(logging.DEBUG, logger=jsonl.__name__):
            for version in (1, 2, 3):
                await _until_idle(writer)
                writer.offer(version, limited(1000.0 * version))
        assert os.sched_getaffinity(writer._thread.native_id or -1) == _CPUS
    finally:
        await writer.stop()
    refused = [r for r in caplog.records if "stays on the process's CPUs" in r.getMessage()]
    assert len(refused) == 1, caplog.text
    assert [_limit_of(line) for line in _read_lines(path)] == [1000.0, 2000.0, 3000.0]
