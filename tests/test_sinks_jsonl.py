"""The jsonl sink: exact line format, one flushed line per publication, file or stdout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from eebus_bridge.backoff import BackoffPolicy
from eebus_bridge.config import JsonlOutput
from eebus_bridge.publication import LatestValue, Publication
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
